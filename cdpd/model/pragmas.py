"""Settings every SQLite file of cdpd that holds users' data takes on its writing connection."""

# A regulation's deletion must not leave the user's rows in a file's free space: ON zeroes
# what is deleted, pages freed whole included (FAST would leave those on the freelist). Many
# builds (Debian's) default to ON; this says it for those that do not.
SECURE_DELETE = "PRAGMA secure_delete = ON"
