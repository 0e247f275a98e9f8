"""The cache on disk: entries (sealed, atomic, self-describing), their write lock, removal and
usage, the manifest, the recipe an entry was made with, entries keyed by a module's weights, and
the file operations that behave the same on Windows and Linux.

Imports: the top-level modules (`constants`, `errors`, `progress`) only; nothing of the other parts.
"""
