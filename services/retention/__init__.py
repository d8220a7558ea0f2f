"""Retention: which rows a contract's retention has expired."""
