"""The life of a contract: versions loaded from `contracts/` as drafts, signed off by two IG
leads, activated by the owner, retired by the next active version."""
