//! The BackgroundPersistence API.
