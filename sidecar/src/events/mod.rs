//! Stream-event log: durable, replayable, per-origin ordered, with live tailing.
//! Built by the stream-events issue.
