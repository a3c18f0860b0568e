"""The JetStream backend: accepted messages in a NATS JetStream cluster shared by cdpd nodes."""
