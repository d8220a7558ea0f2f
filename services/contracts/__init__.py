"""Data contracts: the format (model), loading and linting, protection at rest, validation.

Import from the submodules (``services.contracts.validation`` ...); this package imports
nothing itself so that loading a contract does not pull in the cryptography and Arrow code.
"""
