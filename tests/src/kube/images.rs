//! The container images of the test cluster, made on this machine (no
//! registry can be reached) from the binaries built for it and the host's
//! own programs, under the names the manifests and the conformance suite
//! ask for, and imported into every node's containerd.
//!
//! A dynamically linked program is copied with the shared libraries `ldd`
//! names for it. Where the suite's image is a whole distribution (agnhost is
//! Alpine with curl, bind-tools and netcat; jessie-dnsutils is Debian with
//! dnsutils), the image holds the same programs taken from this Debian host.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::netns::check;
use crate::rootfs::{oci_archive, ImageConfig, BUSYBOX};

/// The sandbox image the kubelet and containerd use.
pub const PAUSE: &str = "registry.k8s.io/pause:3.10.1";
/// trellis's image, as `manifests/` name it.
pub const TRELLIS: &str = "localhost/trellis:0.1.0";
pub const AGNHOST: &str = "registry.k8s.io/e2e-test-images/agnhost:2.56";
pub const BUSYBOX_IMAGE: &str = "registry.k8s.io/e2e-test-images/busybox:1.37.0-1";
pub const JESSIE_DNSUTILS: &str = "registry.k8s.io/e2e-test-images/jessie-dnsutils:1.7";
pub const NGINX: &str = "registry.k8s.io/e2e-test-images/nginx:1.14-4";
pub const COREDNS: &str = "registry.k8s.io/coredns/coredns:v1.12.1";

/// Where the image inputs come from.
#[derive(Clone, Debug)]
pub struct Sources {
    /// `kube-build.sh`'s output: agnhost, coredns, pause.
    pub kube_bin: PathBuf,
    /// trellis, trellis-ipam, trellis-agent (release builds).
    pub trellis_bin: PathBuf,
    /// agnhost's porter certificates (from the Kubernetes sources).
    pub agnhost_porter_dir: Option<PathBuf>,
}

/// One image: files copied from the host, busybox applets, a config.
struct Spec {
    name: &'static str,
    /// (host path, path in the image)
    files: Vec<(PathBuf, String)>,
    /// Link every busybox applet into /bin (what is not there already).
    busybox: bool,
    dirs: &'static [&'static str],
    /// (path in the image, contents)
    text: Vec<(&'static str, String)>,
    config: ImageConfig,
}

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n";
const GROUP: &str = "root:x:0:\nnobody:x:65534:\n";

fn specs(src: &Sources) -> Vec<Spec> {
    let kube = |name: &str| src.kube_bin.join(name);
    let trellis = |name: &str| src.trellis_bin.join(name);
    let host = |path: &str| PathBuf::from(path);
    let dns_tools = || {
        vec![
            (host("/usr/bin/dig"), "/usr/bin/dig".to_owned()),
            (host("/usr/bin/host"), "/usr/bin/host".to_owned()),
            (host("/usr/bin/nslookup"), "/usr/bin/nslookup".to_owned()),
            (host("/usr/bin/getent"), "/usr/bin/getent".to_owned()),
        ]
    };
    let base_text = || {
        vec![
            ("/etc/passwd", PASSWD.to_owned()),
            ("/etc/group", GROUP.to_owned()),
            ("/etc/nsswitch.conf", "hosts: files dns\n".to_owned()),
        ]
    };

    let mut agnhost_files = vec![
        (kube("agnhost"), "/agnhost".to_owned()),
        (host("/usr/bin/curl"), "/usr/bin/curl".to_owned()),
        (host("/bin/nc.openbsd"), "/usr/bin/nc".to_owned()),
        (host("/bin/ip"), "/sbin/ip".to_owned()),
        (host("/bin/bash"), "/bin/bash".to_owned()),
        // Not busybox's sh: Debian's busybox runs its own applets before
        // anything on PATH, so `nc` would not be netcat-openbsd.
        (host("/bin/dash"), "/bin/sh".to_owned()),
    ];
    agnhost_files.extend(dns_tools());
    if let Some(porter) = &src.agnhost_porter_dir {
        for file in ["localhost.crt", "localhost.key"] {
            agnhost_files.push((porter.join(file), format!("/{file}")));
        }
    }
    let mut agnhost_text = base_text();
    agnhost_text[0]
        .1
        .push_str("user-defined-in-image:x:1000:1000::/home/user:/bin/sh\n");
    agnhost_text[1].1.push_str(
        "user-defined-in-image:x:1000:\ngroup-defined-in-image:x:50000:user-defined-in-image\n",
    );

    let mut jessie_files = dns_tools();
    jessie_files.push((host("/bin/bash"), "/bin/bash".to_owned()));
    jessie_files.push((host("/bin/dash"), "/bin/sh".to_owned()));

    vec![
        Spec {
            name: PAUSE,
            files: vec![(kube("pause"), "/pause".to_owned())],
            busybox: false,
            dirs: &[],
            text: vec![],
            config: ImageConfig::entrypoint(&["/pause"]),
        },
        Spec {
            name: TRELLIS,
            files: vec![
                (
                    trellis("trellis-agent"),
                    "/usr/local/bin/trellis-agent".to_owned(),
                ),
                (trellis("trellis"), "/usr/local/bin/trellis".to_owned()),
                (
                    trellis("trellis-ipam"),
                    "/usr/local/bin/trellis-ipam".to_owned(),
                ),
                (host("/usr/sbin/nft"), "/usr/sbin/nft".to_owned()),
                // The cleanup DaemonSet's idle container runs `sleep`
                // (the Containerfile's Debian base has it).
                (host("/bin/sleep"), "/bin/sleep".to_owned()),
            ],
            busybox: false,
            dirs: &["/tmp", "/run"],
            text: base_text(),
            config: ImageConfig::cmd(&["trellis-agent", "run"]),
        },
        Spec {
            name: AGNHOST,
            files: agnhost_files,
            busybox: true,
            dirs: &["/uploads", "/tmp", "/home/user"],
            text: agnhost_text,
            config: ImageConfig {
                entrypoint: vec!["/agnhost".into()],
                cmd: vec!["pause".into()],
            },
        },
        Spec {
            name: BUSYBOX_IMAGE,
            files: vec![],
            busybox: true,
            dirs: &["/tmp"],
            text: base_text(),
            config: ImageConfig::cmd(&["sh"]),
        },
        Spec {
            name: JESSIE_DNSUTILS,
            files: jessie_files,
            busybox: true,
            dirs: &["/tmp"],
            text: base_text(),
            config: ImageConfig::cmd(&["sh"]),
        },
        // A stand-in: the suite only runs it as a pod with ports declared;
        // busybox's httpd answers on port 80 as nginx would.
        Spec {
            name: NGINX,
            files: vec![],
            busybox: true,
            dirs: &["/tmp", "/usr/share/nginx/html"],
            text: {
                let mut t = base_text();
                t.push((
                    "/usr/share/nginx/html/index.html",
                    "nginx stand-in\n".into(),
                ));
                t
            },
            config: ImageConfig::cmd(&["httpd", "-f", "-p", "80", "-h", "/usr/share/nginx/html"]),
        },
        Spec {
            name: COREDNS,
            files: vec![(kube("coredns"), "/coredns".to_owned())],
            busybox: false,
            dirs: &["/tmp"],
            text: base_text(),
            config: ImageConfig::entrypoint(&["/coredns"]),
        },
    ]
}

/// Builds every image as an OCI archive under `out`; returns the archives.
pub fn build_all(src: &Sources, out: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out)?;
    let mut archives = Vec::new();
    for spec in specs(src) {
        let file = out.join(format!("{}.tar", file_name(spec.name)));
        build(&spec, &file).with_context(|| format!("building the image {}", spec.name))?;
        archives.push(file);
    }
    Ok(archives)
}

fn file_name(image: &str) -> String {
    image.rsplit('/').next().unwrap_or(image).replace(':', "-")
}

fn build(spec: &Spec, out: &Path) -> Result<()> {
    let root = tempfile::Builder::new().prefix("trl-image-").tempdir()?;
    let root = root.path();
    for dir in ["bin", "etc", "proc", "sys", "dev", "tmp", "run", "var/run"] {
        std::fs::create_dir_all(root.join(dir))?;
    }
    for dir in spec.dirs {
        std::fs::create_dir_all(root.join(dir.trim_start_matches('/')))?;
    }
    let mut libraries = BTreeSet::new();
    for (from, to) in &spec.files {
        if !from.is_file() {
            bail!(
                "{} is missing (scripts/setup.sh installs the host's programs, \
                 scripts/kube-build.sh the cluster's)",
                from.display()
            );
        }
        copy_into(root, from, to)?;
        libraries.extend(shared_libraries(from)?);
    }
    if spec.busybox {
        copy_into(root, Path::new(BUSYBOX), "/bin/busybox")?;
        for applet in busybox_applets()? {
            let link = root.join("bin").join(&applet);
            if !link.exists() && !root.join("usr/bin").join(&applet).exists() {
                std::os::unix::fs::symlink("busybox", link)?;
            }
        }
    }
    for lib in libraries {
        let path = lib.to_str().context("library path")?.to_owned();
        copy_into(root, &lib, &path)?;
    }
    for (path, contents) in &spec.text {
        let file = root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(file.parent().expect("absolute path"))?;
        std::fs::write(file, contents)?;
    }
    oci_archive(root, spec.name, &spec.config, out)
}

fn copy_into(root: &Path, from: &Path, to: &str) -> Result<()> {
    let dest = root.join(to.trim_start_matches('/'));
    std::fs::create_dir_all(dest.parent().expect("absolute path"))?;
    // Follows symlinks: the image holds the file itself.
    std::fs::copy(from, &dest).with_context(|| format!("copying {}", from.display()))?;
    Ok(())
}

/// The shared libraries (and the dynamic loader) a program needs, as `ldd`
/// lists them; none for a static program.
fn shared_libraries(program: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(program)
        .output()
        .context("running ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || text.contains("not a dynamic executable") {
        return Ok(Vec::new());
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
        // "/lib64/ld-linux-x86-64.so.2 (0x...)"; vdso has no file.
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(path) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(path));
        } else if line.contains("not found") {
            bail!("{}: {}", program.display(), line.trim());
        }
    }
    Ok(libs)
}

fn busybox_applets() -> Result<Vec<String>> {
    let out = check(
        &Command::new(BUSYBOX)
            .arg("--list")
            .output()
            .context("running busybox --list")?,
    )?;
    Ok(out.lines().map(str::to_owned).collect())
}

/// Imports the archives into a containerd's `k8s.io` namespace (the CRI's).
pub fn import(socket: &Path, archives: &[PathBuf]) -> Result<()> {
    for archive in archives {
        check(
            &Command::new("ctr")
                .arg("--address")
                .arg(socket)
                .args(["-n", "k8s.io", "images", "import"])
                .arg(archive)
                .output()
                .context("running ctr")?,
        )
        .with_context(|| format!("importing {}", archive.display()))?;
    }
    Ok(())
}
