"""Local servers that hold cdpd to each vendor API's documented contract: auth, required fields,
limits, and the error statuses and bodies the real API answers with."""
