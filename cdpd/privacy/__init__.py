"""Privacy: personal data found in messages, where it may go, and regulations (suppress, delete)."""
