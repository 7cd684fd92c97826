//! nvmfd configuration (filled in by the config work).
