//! The ACPI power button (QEMU `system_powerdown`). Without acpid in the image, init reads the
//! button's input event device itself: a KEY_POWER press means an orderly poweroff.
//! Needs the kernel's ACPI button driver and evdev (built in, or loaded as modules first).

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;

const EV_KEY: u16 = 0x01;
const KEY_POWER: u16 = 116;

/// The `eventN` handlers of every input device whose name contains "Power Button", from the
/// text of /proc/bus/input/devices.
pub fn power_button_events(devices: &str) -> Vec<String> {
    devices
        .split("\n\n")
        .filter(|block| block.lines().any(|l| l.starts_with("N: Name=") && l.contains("Power Button")))
        .flat_map(|block| {
            block
                .lines()
                .filter_map(|l| l.strip_prefix("H: Handlers="))
                .flat_map(|h| h.split_whitespace())
                .filter(|h| h.starts_with("event"))
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Opens every power button's event device (non-blocking).
pub fn open_power_buttons() -> Vec<File> {
    let devices = std::fs::read_to_string("/proc/bus/input/devices").unwrap_or_default();
    power_button_events(&devices)
        .into_iter()
        .filter_map(|ev| {
            OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                .open(format!("/dev/input/{ev}"))
                .ok()
        })
        .collect()
}

/// Whether a buffer of `struct input_event`s holds a power key press.
pub fn has_power_press(buf: &[u8]) -> bool {
    let size = std::mem::size_of::<libc::input_event>();
    buf.chunks_exact(size).any(|ev| {
        // The struct ends with type (u16), code (u16), value (i32) after the timestamp.
        let tail = &ev[size - 8..];
        let kind = u16::from_ne_bytes([tail[0], tail[1]]);
        let code = u16::from_ne_bytes([tail[2], tail[3]]);
        let value = i32::from_ne_bytes([tail[4], tail[5], tail[6], tail[7]]);
        kind == EV_KEY && code == KEY_POWER && value == 1
    })
}

/// Reads what is pending on a button device; true when it was pressed.
pub fn read_press(dev: &mut File) -> bool {
    let mut buf = vec![0u8; std::mem::size_of::<libc::input_event>() * 16];
    let mut pressed = false;
    while let Ok(n) = dev.read(&mut buf) {
        if n == 0 {
            break;
        }
        pressed |= has_power_press(&buf[..n]);
    }
    pressed
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEVICES: &str = "I: Bus=0019 Vendor=0000 Product=0001 Version=0000
N: Name=\"Power Button\"
P: Phys=LNXPWRBN/button/input0
H: Handlers=kbd event0 
B: EV=3

I: Bus=0011 Vendor=0001 Product=0001 Version=ab41
N: Name=\"AT Translated Set 2 keyboard\"
H: Handlers=sysrq kbd event1 leds 
";

    #[test]
    fn finds_the_power_button_only() {
        assert_eq!(power_button_events(DEVICES), ["event0"]);
        assert!(power_button_events("").is_empty());
    }

    fn event(kind: u16, code: u16, value: i32) -> Vec<u8> {
        let size = std::mem::size_of::<libc::input_event>();
        let mut ev = vec![0u8; size - 8];
        ev.extend_from_slice(&kind.to_ne_bytes());
        ev.extend_from_slice(&code.to_ne_bytes());
        ev.extend_from_slice(&value.to_ne_bytes());
        ev
    }

    #[test]
    fn only_a_power_key_press_counts() {
        let mut buf = event(EV_KEY, KEY_POWER, 0);
        buf.extend(event(0, 0, 0));
        assert!(!has_power_press(&buf));
        buf.extend(event(EV_KEY, KEY_POWER, 1));
        assert!(has_power_press(&buf));
        assert!(!has_power_press(&event(EV_KEY, 30, 1)));
    }
}
