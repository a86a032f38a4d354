//! HTTPS for the REST API: certificates made with the `openssl` command in a
//! temporary directory, requests made with `curl` (a real client that
//! verifies the server), the server on a loopback port.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use pgwarden_api::{
    router, serve_tls, server_config, ApiBackend, BoxFuture, ClientVerify, NodeStatus, TlsSettings,
};
use pgwarden_types::ClusterSnapshot;
use tokio::net::TcpListener;

struct Backend;

impl ApiBackend for Backend {
    fn status(&self) -> NodeStatus {
        NodeStatus::starting("batman", "node1", chrono::Utc::now().timestamp_millis())
    }

    fn cluster(&self) -> BoxFuture<'_, Result<ClusterSnapshot, String>> {
        Box::pin(async { Err("no store in this test".to_string()) })
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let status = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("running openssl");
    assert!(
        status.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&status.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate.
fn certificates(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=pgwarden test CA",
    ]);
    openssl(dir, &ca);
    for (name, ext) in [
        (
            "server",
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        ),
        (
            "client",
            "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
        ),
    ] {
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let pem = format!("{name}.pem");
        let extfile = format!("{name}.ext");
        std::fs::write(dir.join(&extfile), ext).unwrap();
        let mut req = vec!["req"];
        req.extend(ec);
        req.extend(["-keyout", &key, "-out", &csr, "-subj", "/CN=127.0.0.1"]);
        openssl(dir, &req);
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                &extfile,
            ],
        );
    }
}

async fn start(settings: &TlsSettings) -> (u16, tokio::sync::oneshot::Sender<()>) {
    let config = server_config(settings).expect("TLS configuration");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve_tls(
        listener,
        router(Arc::new(Backend)),
        config,
        async move {
            let _ = rx.await;
        },
    ));
    (port, tx)
}

/// curl's exit code and the HTTP status it printed.
async fn curl(dir: &Path, port: u16, client_cert: bool) -> (i32, String) {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new("curl");
        cmd.current_dir(&dir).args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
            "--cacert",
            "ca.pem",
        ]);
        if client_cert {
            cmd.args(["--cert", "client.pem", "--key", "client.key"]);
        }
        let out = cmd
            .arg(format!("https://127.0.0.1:{port}/liveness"))
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn https_with_and_without_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let p = |f: &str| dir.path().join(f);

    let plain = TlsSettings {
        certfile: p("server.pem"),
        keyfile: p("server.key"),
        cafile: None,
        verify_client: ClientVerify::None,
    };
    let (port, _stop) = start(&plain).await;
    assert_eq!(curl(dir.path(), port, false).await, (0, "200".to_string()));

    // Client verification without a CA to verify against is refused at start.
    let no_ca = TlsSettings {
        verify_client: ClientVerify::Required,
        ..plain.clone()
    };
    let err = server_config(&no_ca).unwrap_err().to_string();
    assert!(err.contains("restapi.cafile"), "{err}");

    let required = TlsSettings {
        cafile: Some(p("ca.pem")),
        verify_client: ClientVerify::Required,
        ..plain.clone()
    };
    let (port, _stop2) = start(&required).await;
    let (code, _) = curl(dir.path(), port, false).await;
    assert_ne!(code, 0, "a client without a certificate is refused");
    assert_eq!(curl(dir.path(), port, true).await, (0, "200".to_string()));

    let optional = TlsSettings {
        verify_client: ClientVerify::Optional,
        ..required.clone()
    };
    let (port, _stop3) = start(&optional).await;
    assert_eq!(curl(dir.path(), port, false).await, (0, "200".to_string()));
    assert_eq!(curl(dir.path(), port, true).await, (0, "200".to_string()));
}

#[test]
fn unusable_tls_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = TlsSettings {
        certfile: dir.path().join("nope.pem"),
        keyfile: dir.path().join("nope.key"),
        cafile: None,
        verify_client: ClientVerify::None,
    };
    let err = server_config(&missing).unwrap_err().to_string();
    assert!(
        err.contains("restapi.certfile") && err.contains("nope.pem"),
        "{err}"
    );
    std::fs::write(dir.path().join("empty.pem"), "").unwrap();
    let empty = TlsSettings {
        certfile: dir.path().join("empty.pem"),
        ..missing
    };
    let err = server_config(&empty).unwrap_err().to_string();
    assert!(err.contains("no PEM certificate"), "{err}");
}
