//! RFC 6238 TOTP (HMAC-SHA1, 6 digits, 30 s step) and RFC 4648 base32, as authenticator apps use.

use hmac::{Hmac, Mac};
use sha1::Sha1;

/// Seconds per TOTP window.
pub const STEP_SECONDS: i64 = 30;
/// Digits per code.
pub const DIGITS: u32 = 6;

/// The HOTP value (RFC 4226) for `counter`, truncated to `digits` decimal digits, zero-padded.
pub fn hotp(seed: &[u8], counter: u64, digits: u32) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(seed).expect("HMAC takes keys of any length");
    mac.update(&counter.to_be_bytes());
    let digest = mac.finalize().into_bytes();
    let offset = (digest[digest.len() - 1] & 0x0f) as usize;
    let binary = u32::from_be_bytes([
        digest[offset] & 0x7f,
        digest[offset + 1],
        digest[offset + 2],
        digest[offset + 3],
    ]);
    let value = binary % 10u32.pow(digits);
    format!("{value:0width$}", width = digits as usize)
}

/// The TOTP window counter for a Unix time in seconds.
pub fn counter_at(unix_seconds: i64) -> u64 {
    unix_seconds.div_euclid(STEP_SECONDS).max(0) as u64
}

/// The six-digit TOTP code for `seed` at Unix time `unix_seconds`.
pub fn code_at_unix(seed: &[u8], unix_seconds: i64) -> String {
    hotp(seed, counter_at(unix_seconds), DIGITS)
}

/// The six-digit TOTP code for `seed` at `t`.
pub fn code_at(seed: &[u8], t: jiff::Timestamp) -> String {
    code_at_unix(seed, t.as_second())
}

/// Whether `code` is the code of the window containing `t` or of one window either side.
pub fn verify(seed: &[u8], code: &str, t: jiff::Timestamp) -> bool {
    let counter = counter_at(t.as_second());
    [counter.wrapping_sub(1), counter, counter + 1]
        .iter()
        .any(|c| constant_time_eq(hotp(seed, *c, DIGITS).as_bytes(), code.as_bytes()))
}

/// The window (counter) whose code `code` is, among the one containing `t` and one either side.
pub fn matching_window(seed: &[u8], code: &str, t: jiff::Timestamp) -> Option<u64> {
    let counter = counter_at(t.as_second());
    [counter.wrapping_sub(1), counter, counter + 1]
        .into_iter()
        .find(|c| constant_time_eq(hotp(seed, *c, DIGITS).as_bytes(), code.as_bytes()))
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

const BASE32_ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// RFC 4648 base32 without padding (the form authenticator apps take as a "secret key").
pub fn base32_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(5) * 8);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &byte in data {
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(BASE32_ALPHABET[((buffer >> bits) & 0x1f) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(BASE32_ALPHABET[((buffer << (5 - bits)) & 0x1f) as usize] as char);
    }
    out
}

/// Decodes RFC 4648 base32 (case-insensitive; padding, spaces and dashes ignored).
pub fn base32_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 5 / 8);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for c in text.chars().filter(|c| !matches!(c, '=' | ' ' | '-')) {
        let value = BASE32_ALPHABET
            .iter()
            .position(|&a| a as char == c.to_ascii_uppercase())? as u32;
        buffer = (buffer << 5) | value;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
        }
    }
    Some(out)
}
