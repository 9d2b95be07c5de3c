//! One file per hooked subsystem. Entry points stay thin: they call a `try_` function that
//! returns a `Result`, and always return 0.
mod go_tls;
mod plaintext;
mod process;
mod ssl_free;
mod ssl_read;
mod ssl_write;
