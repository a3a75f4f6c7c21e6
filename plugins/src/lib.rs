//! Sources and decoders.
