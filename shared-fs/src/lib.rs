//! Everything ha-sidecar does on the shared directory (filled by the sessions issue).
