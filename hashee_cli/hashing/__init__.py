"""Hash tables that map token ids to exit layers."""

from hashee_cli.hashing.table import HashTable, load_hash_table, resolve_exit_layers

__all__ = ["HashTable", "load_hash_table", "resolve_exit_layers"]
