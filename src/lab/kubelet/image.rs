//! The one image the lab's kubelet can run: the probe image (probe-image/Dockerfile), made
//! from the lab's `netpol-probe` as the Dockerfile makes it — the binary at `/netpol-probe`
//! carrying the file capability `cap_net_bind_service=+p`, ENTRYPOINT `/netpol-probe`, CMD
//! `--help`, USER 65534:65534. Any image of its repository (any tag or digest) is it, and so
//! is the image `--image` names; every other image fails to pull, as it would offline.

use std::path::{Path, PathBuf};

use crate::manifest::{DEFAULT_IMAGE, PROBE_ENTRYPOINT, PROBE_UID};

/// The image's config, as `docker inspect` would show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// The image's files: (host path, path in the container). A dynamically linked probe (a
    /// debug build) brings the libraries it links, each at its own path.
    pub files: Vec<(PathBuf, String)>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub uid: u32,
    pub gid: u32,
    /// Images that are this one besides the project's repository.
    pub also: Vec<String>,
}

/// `security.capability` for `cap_net_bind_service=+p` (VFS_CAP_REVISION_2 without the
/// effective bit, CAP_NET_BIND_SERVICE = 10 in the low permitted word). NB: not `+ep`: with the
/// effective bit the kernel refuses to exec the binary (EPERM) wherever the capability is not
/// in the bounding set, i.e. in every pod that drops ALL and does not add it back.
const NET_BIND_SERVICE_P: [u8; 20] =
    [0x00, 0x00, 0x00, 0x02, 0x00, 0x04, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

impl Image {
    /// Builds the image's files under `dir` from the lab's probe binary `probe`.
    pub fn build(dir: &Path, probe: &Path, also: Vec<String>) -> Result<Image, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot make {}: {e}", dir.display()))?;
        let binary = dir.join("netpol-probe");
        std::fs::copy(probe, &binary)
            .map_err(|e| format!("cannot copy {} into the lab's image: {e}", probe.display()))?;
        xattr::set(&binary, "security.capability", &NET_BIND_SERVICE_P).map_err(|e| {
            format!("cannot give {} its file capability (security.capability): {e}", binary.display())
        })?;
        let mut files = vec![(binary.clone(), PROBE_ENTRYPOINT.to_string())];
        if has_interpreter(&binary) {
            files.extend(libraries(&binary)?);
        }
        Ok(Image {
            files,
            entrypoint: vec![PROBE_ENTRYPOINT.to_string()],
            cmd: vec!["--help".to_string()],
            uid: PROBE_UID as u32,
            gid: PROBE_UID as u32,
            also,
        })
    }

    /// Whether `reference` names this image.
    pub fn is(&self, reference: &str) -> bool {
        let repository = |r: &str| -> String {
            let r = r.split('@').next().unwrap_or(r);
            match r.rsplit_once(':') {
                // A colon after the last slash is a tag; before it, a registry's port.
                Some((repo, tag)) if !tag.contains('/') => repo.to_string(),
                _ => r.to_string(),
            }
        };
        let ours = repository(DEFAULT_IMAGE);
        repository(reference) == ours
            || self.also.iter().any(|a| a == reference || repository(a) == repository(reference))
    }
}

/// The shared libraries and the program interpreter a dynamically linked `binary` loads, as
/// `ldd` finds them: (the host's file, its path in the container).
fn libraries(binary: &Path) -> Result<Vec<(PathBuf, String)>, String> {
    let output = std::process::Command::new("ldd").arg(binary).output().map_err(|e| {
        format!("{} is dynamically linked and ldd cannot list its libraries ({e}): build the static probe (probe-image/build-static.sh)", binary.display())
    })?;
    let text = String::from_utf8_lossy(&output.stdout);
    let mut found = Vec::new();
    for line in text.lines() {
        let path = match line.split_once("=> ") {
            Some((_, rest)) => rest,
            None => line.trim_start(),
        };
        let Some(path) = path.split(" (").next().filter(|p| p.starts_with('/')) else { continue };
        let host = std::fs::canonicalize(path)
            .map_err(|e| format!("cannot find {path}, which {} needs: {e}", binary.display()))?;
        found.push((host, path.to_string()));
    }
    Ok(found)
}

/// Whether an ELF file names a program interpreter (is dynamically linked).
fn has_interpreter(path: &Path) -> bool {
    let Ok(bytes) = std::fs::read(path) else { return false };
    let u16_at = |at: usize| bytes.get(at..at + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |at: usize| bytes.get(at..at + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let u64_at = |at: usize| bytes.get(at..at + 8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
    if bytes.get(..4) != Some(b"\x7fELF") || bytes.get(4) != Some(&2) {
        return false;
    }
    let (Some(phoff), Some(size), Some(count)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38)) else {
        return false;
    };
    (0..usize::from(count)).any(|i| {
        let at = usize::try_from(phoff).unwrap_or(usize::MAX).saturating_add(i * usize::from(size));
        u32_at(at) == Some(3) // PT_INTERP
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_image_is_known_by_its_repository_or_the_override() {
        let image = Image {
            files: vec![],
            entrypoint: vec![],
            cmd: vec![],
            uid: 65534,
            gid: 65534,
            also: vec!["registry.local:5000/mirror/probe:dev".into()],
        };
        for yes in [
            "ghcr.io/netpol-verify/netpol-probe:0.1.0",
            "ghcr.io/netpol-verify/netpol-probe",
            "ghcr.io/netpol-verify/netpol-probe@sha256:abc",
            "registry.local:5000/mirror/probe:dev",
            "registry.local:5000/mirror/probe:other",
        ] {
            assert!(image.is(yes), "{yes}");
        }
        for no in
            ["nginx", "ghcr.io/netpol-verify/netpol-verify:0.1.0", "registry.local:5000/mirror/other:dev"]
        {
            assert!(!image.is(no), "{no}");
        }
        assert!(has_interpreter(Path::new("/bin/sh")) || !Path::new("/bin/sh").exists());
    }
}
