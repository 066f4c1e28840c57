//! Where the built images are. A make target builds an image and passes its directory in an
//! environment variable; a test never guesses one, so a stale image is never booted by accident.

use std::path::{Path, PathBuf};

/// The base image (`make image`): `vmlinuz`, `initrd.img`.
pub const IMAGE_DIR_ENV: &str = "CERANA_IMAGE_DIR";
/// The full profile (`make image-full`), with libvirt and QEMU.
pub const FULL_IMAGE_DIR_ENV: &str = "CERANA_FULL_IMAGE_DIR";
/// The hybrid ISO (`make iso`).
pub const ISO_ENV: &str = "CERANA_ISO";

/// The base image directory from [`IMAGE_DIR_ENV`], or why there is none.
pub fn image_dir() -> Result<PathBuf, String> {
    image_dir_from(IMAGE_DIR_ENV)
}

/// An image directory from `var`, checked to hold a kernel and an initrd.
pub fn image_dir_from(var: &str) -> Result<PathBuf, String> {
    let dir = std::env::var_os(var).map(PathBuf::from).ok_or_else(|| {
        format!("{var} is not set (the make target that runs this test builds the image and sets it)")
    })?;
    check_image_dir(&dir).map_err(|why| format!("{var}={}: {why}", dir.display()))?;
    Ok(dir)
}

/// `Ok` when `dir` holds `vmlinuz` and `initrd.img`.
pub fn check_image_dir(dir: &Path) -> Result<(), String> {
    if !dir.is_dir() {
        return Err("no such image directory (make image)".into());
    }
    for f in ["vmlinuz", "initrd.img"] {
        if !dir.join(f).is_file() {
            return Err(format!("no {f} in the image directory (make image)"));
        }
    }
    Ok(())
}

/// A file (the ISO) from `var`, checked to exist.
pub fn file_from(var: &str) -> Result<PathBuf, String> {
    let path = std::env::var_os(var).map(PathBuf::from).ok_or_else(|| format!("{var} is not set"))?;
    if !path.is_file() {
        return Err(format!("{var}={}: no such file", path.display()));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_without_an_image_names_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        assert!(check_image_dir(&dir.path().join("gone")).unwrap_err().contains("no such image directory"));
        std::fs::write(dir.path().join("vmlinuz"), b"k").unwrap();
        assert!(check_image_dir(dir.path()).unwrap_err().contains("initrd.img"));
        std::fs::write(dir.path().join("initrd.img"), b"i").unwrap();
        assert_eq!(check_image_dir(dir.path()), Ok(()));
    }
}
