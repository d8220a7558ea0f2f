"""Products: definitions (YAML), the query engine (DuckDB on Parquet), disclosure control.

Import from the submodules (``services.products.engine`` ...).
"""
