//! Secondary index store (tantivy): versioned documents per kind, Gerrit-style queries.
//! The only module that imports tantivy. Built by the index issue.
