"""hashee: hash-based early exiting (HashEE) for transformer encoders.

A hash function fixes, for every token, the layer after which its hidden
state stops being updated. The package builds those hash tables, fine-tunes
and evaluates models that use them, and measures what they save.
"""

__version__ = "0.1.0"
