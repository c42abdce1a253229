"""The match stage: hash lists from their file formats into a store (Redis or the local
SQLite file), from the store into an in-memory index kept live, and an attachment's
fingerprints looked up in it; the verdict cache beside it. Does I/O (the store)."""
