"""Neural building blocks: ID embedding tables, towers, crossing blocks."""
