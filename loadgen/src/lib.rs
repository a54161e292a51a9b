//! Load generator for the mixer (in progress).
#![forbid(unsafe_code)]
