//! A real Docker engine for the agent's tests: test images imported from Debian's
//! `busybox-static` (no registry is needed), and containers created with bollard,
//! labelled `herd.test=<run>` and removed when the [`Fleet`] is dropped, even after a
//! failed assertion. `scripts/clean-test-containers` removes leftovers of a killed run.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use bollard::Docker;
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    CreateContainerOptions, InspectContainerOptions, RemoveContainerOptions, StartContainerOptions,
};

/// The label every test container carries (value: the run's id).
pub const LABEL: &str = "herd.test";

/// A busybox image `repo:tag`, imported once. `variant` goes into a file of the image,
/// so different variants have different image ids (different peer groups).
pub fn image(repo: &str, variant: &str) -> String {
    let reference = format!("{repo}:1");
    let present = Command::new("docker")
        .args(["image", "inspect", &reference])
        .output()
        .is_ok_and(|o| o.status.success());
    if present {
        return reference;
    }
    let busybox = std::env::var("HERD_BUSYBOX").unwrap_or_else(|_| "/bin/busybox".into());
    assert!(
        Path::new(&busybox).exists(),
        "{busybox} is missing: install Debian's busybox-static (scripts/check does)"
    );
    let root = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let bin = root.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap_or_else(|e| panic!("{e}"));
    std::fs::create_dir_all(root.path().join("tmp")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::copy(&busybox, bin.join("busybox")).unwrap_or_else(|e| panic!("{e}"));
    for tool in [
        "sh", "sleep", "echo", "mkdir", "cat", "top", "yes", "ps", "dd", "cp",
    ] {
        std::os::unix::fs::symlink("busybox", bin.join(tool)).unwrap_or_else(|e| panic!("{e}"));
    }
    std::fs::write(root.path().join("variant"), variant).unwrap_or_else(|e| panic!("{e}"));
    let tar = root.path().with_extension("tar");
    let ok = Command::new("tar")
        .args(["-C"])
        .arg(root.path())
        .args(["-cf"])
        .arg(&tar)
        .arg(".")
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "tar failed");
    let out = Command::new("docker")
        .args(["import", "--change", "CMD [\"/bin/sh\"]"])
        .arg(&tar)
        .arg(&reference)
        .output()
        .unwrap_or_else(|e| panic!("docker import: {e}"));
    let _ = std::fs::remove_file(&tar);
    assert!(
        out.status.success(),
        "docker import: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    reference
}

/// Test containers of one run, removed on drop.
pub struct Fleet {
    pub docker: Docker,
    pub run: String,
    pub rt: tokio::runtime::Runtime,
}

impl Fleet {
    pub fn new(run: &str) -> Fleet {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let docker = rt
            .block_on(async {
                Docker::connect_with_defaults()
                    .unwrap_or_else(|e| panic!("docker: {e}"))
                    .negotiate_version()
                    .await
            })
            .unwrap_or_else(|e| panic!("docker: {e}"));
        Fleet {
            docker,
            run: run.to_owned(),
            rt,
        }
    }

    /// Starts a container that idles (a shell sleeping in a loop, logging a line a
    /// second); returns its id.
    pub fn start(&self, image: &str, name: &str) -> String {
        self.start_script(
            image,
            name,
            "i=0; while true; do i=$((i+1)); echo tick $i; sleep 1; done",
        )
    }

    /// Starts a container running `script` with `/bin/sh -c`; returns its id.
    pub fn start_script(&self, image: &str, name: &str, script: &str) -> String {
        let name = format!("{}-{name}", self.run);
        self.rt.block_on(async {
            let body = ContainerCreateBody {
                image: Some(image.to_owned()),
                cmd: Some(vec!["/bin/sh".into(), "-c".into(), script.to_owned()]),
                labels: Some(HashMap::from([(LABEL.to_owned(), self.run.clone())])),
                ..ContainerCreateBody::default()
            };
            let opts = CreateContainerOptions {
                name: Some(name.clone()),
                ..CreateContainerOptions::default()
            };
            let c = self
                .docker
                .create_container(Some(opts), body)
                .await
                .unwrap_or_else(|e| panic!("create {name}: {e}"));
            self.docker
                .start_container(&c.id, None::<StartContainerOptions>)
                .await
                .unwrap_or_else(|e| panic!("start {name}: {e}"));
            c.id
        })
    }

    /// Runs a command in a container, detached (`docker exec -d`).
    pub fn exec_detached(&self, id: &str, cmd: &[&str]) {
        self.rt.block_on(async {
            let exec = self
                .docker
                .create_exec(
                    id,
                    bollard::exec::CreateExecOptions::<String> {
                        cmd: Some(cmd.iter().map(|s| (*s).to_owned()).collect()),
                        attach_stdout: Some(false),
                        attach_stderr: Some(false),
                        ..Default::default()
                    },
                )
                .await
                .unwrap_or_else(|e| panic!("exec create: {e}"));
            self.docker
                .start_exec(
                    &exec.id,
                    Some(bollard::exec::StartExecOptions {
                        detach: true,
                        ..Default::default()
                    }),
                )
                .await
                .unwrap_or_else(|e| panic!("exec start: {e}"));
        });
    }

    pub fn inspect(&self, id: &str) -> bollard::models::ContainerInspectResponse {
        self.rt
            .block_on(
                self.docker
                    .inspect_container(id, None::<InspectContainerOptions>),
            )
            .unwrap_or_else(|e| panic!("inspect {id}: {e}"))
    }

    /// `docker rm -f`.
    pub fn remove(&self, id: &str) {
        let _ = self.rt.block_on(self.docker.remove_container(
            id,
            Some(RemoveContainerOptions {
                force: true,
                ..RemoveContainerOptions::default()
            }),
        ));
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        remove_labelled(&format!("{LABEL}={}", self.run));
    }
}

/// Removes every container with the label filter (`herd.test` for all runs).
pub fn remove_labelled(filter: &str) {
    let out = Command::new("docker")
        .args(["ps", "-aq", "--filter", &format!("label={filter}")])
        .output();
    if let Ok(out) = out {
        let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        if !ids.is_empty() {
            let _ = Command::new("docker")
                .args(["rm", "-f"])
                .args(&ids)
                .output();
        }
    }
}
