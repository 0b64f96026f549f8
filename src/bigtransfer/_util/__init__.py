"""General helpers that know nothing of BiT: atomic files and locks, printable text, the installed package and its
optional extras, device choice, and the error types every layer may raise. The bottom layer: it imports no other
part of bigtransfer, so any layer may use it."""
