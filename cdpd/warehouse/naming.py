"""Warehouse names from user data, as Segment makes them: pure functions, no I/O.

`snakecase` is a line-by-line port of segmentio/go-snakecase (`snake.go`), which Segment names as
the rule for every schema, table and column. It works on UTF-8 bytes and keeps only ASCII letters
and digits, so its output is always `[a-z0-9_]*`. The functions around it add what warehouses
need: a `_` before names that start with a digit or are reserved words (as Segment's Redshift
connector does), a `_` before event tables named like a built-in table (as RudderStack does),
and a length cap that truncates deliberately (a hash of the full name keeps truncated names
distinct). Identifiers are still always quoted when they reach SQL (`quote`).
"""

from __future__ import annotations

import hashlib

MAX_NAME_BYTES = 63  # PostgreSQL's limit (NAMEDATALEN - 1); applied to SQLite too, for one layout
TRUNCATION_HASH_CHARS = 8

BUILT_IN_TABLES = frozenset(
    {"identifies", "users", "groups", "accounts", "pages", "screens", "tracks", "aliases"}
)
DISCARDS_TABLE = "cdpd_discards"
# PostgreSQL 15's reserved key words: `SELECT word FROM pg_get_keywords() WHERE catcode IN
# ('R', 'T')`. Names equal to one get a `_` prefix on every warehouse kind, so both kinds agree.
_RESERVED_WORDS_TEXT = """
    all analyse analyze and any array as asc asymmetric authorization binary both case cast check
    collate collation column concurrently constraint create cross current_catalog current_date
    current_role current_schema current_time current_timestamp current_user default deferrable
    desc distinct do else end except false fetch for foreign freeze from full grant group having
    ilike in initially inner intersect into is isnull join lateral leading left like limit
    localtime localtimestamp natural not notnull null offset on only or order outer overlaps
    placing primary references returning right select session_user similar some symmetric table
    tablesample then to trailing true union unique user using variadic verbose when where window
    with
"""
RESERVED_WORDS = frozenset(_RESERVED_WORDS_TEXT.split())

_UNDERSCORE = ord("_")


def _is_lower(c: int) -> bool:
    return 97 <= c <= 122


def _is_upper(c: int) -> bool:
    return 65 <= c <= 90


def _is_digit(c: int) -> bool:
    return 48 <= c <= 57


def _is_alphanumeric(c: int) -> bool:
    return _is_lower(c) or _is_upper(c) or _is_digit(c)


def snakecase(name: str) -> str:
    """go-snakecase's Snakecase, byte for byte: `Order Completed` -> `order_completed`,
    `userID` -> `user_id`, `HTMLParser` -> `htmlparser`, `Café` -> `caf`."""
    s = name.encode("utf-8")
    idx = _fast_path_end(s)
    if idx == len(s):
        return name  # already snake_case
    has_lower, has_underscore, lower_since_underscore = _prefix_flags(s[:idx])
    out = bytearray(s[:idx])
    if _is_upper(s[idx]) and (not has_lower or (has_underscore and not lower_since_underscore)):
        idx = _copy_word(s, idx, out)
    while idx < len(s):
        if not _is_alphanumeric(s[idx]):
            idx += 1
            continue
        if out:
            out.append(_UNDERSCORE)
        idx = _copy_word(s, idx, out)
    return out.decode("ascii")


def _fast_path_end(s: bytes) -> int:
    """How far the name is already snake_case: lowercase letters, digits, and underscores that
    are neither first nor last and are followed by a lowercase letter or digit."""
    idx = 0
    while idx < len(s):
        c = s[idx]
        snake_byte = _is_lower(c) or _is_digit(c)
        inner_underscore = (
            c == _UNDERSCORE
            and 0 < idx < len(s) - 1
            and (_is_lower(s[idx + 1]) or _is_digit(s[idx + 1]))
        )
        if not (snake_byte or inner_underscore):
            break
        idx += 1
    return idx


def _prefix_flags(prefix: bytes) -> tuple[bool, bool, bool]:
    """The flags go-snakecase tracks while scanning the unchanged prefix."""
    has_lower = has_underscore = lower_since_underscore = False
    for c in prefix:
        if _is_lower(c):
            has_lower = True
            lower_since_underscore = lower_since_underscore or has_underscore
        elif c == _UNDERSCORE:
            has_underscore = True
            lower_since_underscore = False
    return has_lower, has_underscore, lower_since_underscore


def _copy_word(s: bytes, idx: int, out: bytearray) -> int:
    """A word: a run of capitals and digits (lowercased), then a run of lowercase and digits."""
    while idx < len(s) and (_is_upper(s[idx]) or _is_digit(s[idx])):
        out.append(s[idx] | 0x20 if _is_upper(s[idx]) else s[idx])
        idx += 1
    while idx < len(s) and (_is_lower(s[idx]) or _is_digit(s[idx])):
        out.append(s[idx])
        idx += 1
    return idx


def warehouse_name(snake: str, *, max_bytes: int = MAX_NAME_BYTES) -> str:
    """A snake_case name made safe as a table or column: `_` before a leading digit or a reserved
    word, then cut to `max_bytes` (see `fit_length`). Empty stays empty: the caller drops it."""
    if not snake:
        return ""
    if snake[0].isdigit() or snake in RESERVED_WORDS:
        snake = "_" + snake
    return fit_length(snake, max_bytes=max_bytes)


def fit_length(name: str, *, max_bytes: int = MAX_NAME_BYTES) -> str:
    """`name` if it fits; otherwise its start plus `_` and 8 hex digits of a hash of the whole
    name, so two long names that share a prefix stay two names. (Names here are ASCII.)"""
    if len(name) <= max_bytes:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:TRUNCATION_HASH_CHARS]
    return f"{name[: max_bytes - TRUNCATION_HASH_CHARS - 1]}_{digest}"


def schema_name(source: str) -> str:
    """The schema of a source: its name snake-cased (`Web Site` -> `web_site`); `pg_` names are
    reserved by PostgreSQL, so they get a `_` too."""
    name = warehouse_name(snakecase(source))
    if name.startswith("pg_") or name == "information_schema":
        name = fit_length("_" + name)
    return name


def event_table_name(event: str) -> str:
    """The table of a track event: `Order Completed` -> `order_completed`; an event named like a
    built-in table (`tracks`, `users`, ...) or the discards table gets a `_` prefix."""
    name = warehouse_name(snakecase(event))
    if name in BUILT_IN_TABLES or name == DISCARDS_TABLE:
        name = "_" + name
    return name


def column_name(raw_path: str) -> str:
    """A column from a property path already joined with `_` (`address_street`): the whole path
    is snake-cased, as Segment does."""
    return warehouse_name(snakecase(raw_path))


def quote(identifier: str) -> str:
    """A double-quoted SQL identifier; a `"` inside is doubled, so any text is only a name."""
    return '"' + identifier.replace('"', '""') + '"'


# Profiles Sync (`cdpd.identity.profiles_sync`), as a deletion finds a user's profiles there:
# the tables naming a profile by one of its `user_id` identifiers (table, profile column, type
# column, value column), the tables linking a merged profile to its canonical one, and the
# columns holding a profile id.
PROFILES_SCHEMA = "cdpd_profiles"
PROFILE_OF_USER = (
    ("user_identifiers", "canonical_segment_id", "type", "external_id_value"),
    ("external_id_mapping_updates", "segment_id", "external_id_type", "external_id_value"),
)
# Only where each profile lives now: `id_graph_updates` also keeps merges an unmerge undid, and
# the profile split off is not the user's.
MERGED_INTO = ("profile_merges",)
# ...but a Profiles Sync that ran between the identity store's deletion and the warehouse's
# drops the deleted profiles' `profile_merges` rows: a merge recorded in `id_graph_updates`
# into an erased profile counts too when `profile_merges` places that profile nowhere else.
MERGE_HISTORY = "id_graph_updates"
MERGE_CHAIN_MAX = 16  # merged into a profile that was merged into another, and so on
PROFILE_COLUMNS = ("segment_id", "canonical_segment_id")
