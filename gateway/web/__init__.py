"""Server-rendered pages for information-governance leads (under /ig/)."""
