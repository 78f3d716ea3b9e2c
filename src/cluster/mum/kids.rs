//! mum's listener for its kids' reports (TCP). Being written: see issue 10.

/// Whether `listen:` names something mum can bind: `auto`, `off`, an IP address, or an
/// interface name.
pub fn check_listen(value: &str) -> Result<(), String> {
    let v = value.trim();
    if v == "auto" || v == "off" || v.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    let interface = !v.is_empty()
        && v.len() <= 15
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '@'));
    if interface {
        Ok(())
    } else {
        Err(format!(
            "{value:?} is not auto, off, an IP address or an interface name"
        ))
    }
}
