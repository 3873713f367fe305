//! Random identifiers shaped like AWS ones.

use base64::Engine as _;
use rand::Rng as _;

const KEY_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
const SECRET_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn random_from(alphabet: &[u8], len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| alphabet[rng.random_range(0..alphabet.len())] as char)
        .collect()
}

/// `prefix` + 16 characters, e.g. `AKIA…` (long-term) or `ASIA…` (session).
pub fn access_key_id(prefix: &str) -> String {
    format!("{prefix}{}", random_from(KEY_ALPHABET, 16))
}

/// `prefix` + 17 characters, e.g. `AIDA…` (user id) or `AROA…` (role id).
pub fn unique_id(prefix: &str) -> String {
    format!("{prefix}{}", random_from(KEY_ALPHABET, 17))
}

/// 40 characters, like a real secret access key.
pub fn secret_access_key() -> String {
    random_from(SECRET_ALPHABET, 40)
}

/// A base64 blob about as long as a real session token.
pub fn session_token() -> String {
    let mut bytes = vec![0u8; 300];
    rand::rng().fill(&mut bytes[..]);
    format!(
        "IQoJb3JpZ2luX2VjE{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// A random TOTP seed (20 bytes, the RFC 4226 recommended length).
pub fn totp_seed() -> Vec<u8> {
    let mut seed = vec![0u8; 20];
    rand::rng().fill(&mut seed[..]);
    seed
}

/// A UUID v4 string, as STS request ids are.
pub fn request_id() -> String {
    let mut b = [0u8; 16];
    rand::rng().fill(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}
