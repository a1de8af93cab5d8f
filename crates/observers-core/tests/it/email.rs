//! The email action against a real SMTP server (Python's aiosmtpd, started by the test).

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

use crate::executor::{harness, order};

fn python() -> String {
    std::env::var("OBSERVERS_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn email_is_delivered_to_a_real_smtp_server() {
    let have = std::process::Command::new(python())
        .args(["-c", "import aiosmtpd"])
        .status()
        .is_ok_and(|s| s.success());
    if !have {
        assert!(
            std::env::var_os("CI").is_none(),
            "aiosmtpd is missing: run `cargo xtask test` (it installs it) or `pip install aiosmtpd`"
        );
        eprintln!("skipping: aiosmtpd not installed (pip install aiosmtpd)");
        return;
    }
    let port = free_port();
    let mut smtp = tokio::process::Command::new(python())
        .args([
            "-u",
            "-m",
            "aiosmtpd",
            "-n",
            "-l",
            &format!("127.0.0.1:{port}"),
            "-c",
            "aiosmtpd.handlers.Debugging",
            "stdout",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "SMTP server did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = format!(
        r#"
[[observers]]
name = "mail"
entity = "Order"
[[observers.actions]]
type = "email"
to = ["ops@example.com"]
from = "shop@example.com"
subject = "Order {{{{ entity_id }}}}: {{{{ new.total }}}}"
body = "Status {{{{ new.status }}}}"
smtp_url = "smtp://127.0.0.1:{port}"
"#
    );
    let h = harness(&text);
    let summary = h.executor.process(&order(42, 150.0, "paid")).await.unwrap();
    assert_eq!(summary.succeeded(), 1, "{summary:?}");

    let mut lines = BufReader::new(smtp.stdout.take().unwrap()).lines();
    let mut seen = String::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            seen.push_str(&line);
            seen.push('\n');
            if line.contains("END MESSAGE") {
                break;
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "message not printed by the SMTP server; got:\n{seen}"
    );
    assert!(seen.contains("Subject: Order 42: 150"), "{seen}");
    assert!(seen.contains("To: ops@example.com"), "{seen}");
    assert!(seen.contains("Status paid"), "{seen}");
    assert!(seen.contains("Message-ID: <42.mail.0@observers>"), "{seen}");
    smtp.kill().await.ok();
}

#[tokio::test]
async fn unreachable_smtp_server_is_transient_and_dead_lettered() {
    let port = free_port();
    let text = format!(
        "[retry]\nmax_attempts = 2\ninitial_backoff = \"10ms\"\n[[observers]]\nname = \"mail\"\nentity = \"Order\"\n[[observers.actions]]\ntype = \"email\"\nto = [\"ops@example.com\"]\nsubject = \"s\"\nsmtp_url = \"smtp://127.0.0.1:{port}\"\n"
    );
    let h = harness(&text);
    let summary = h.executor.process(&order(1, 1.0, "x")).await.unwrap();
    assert_eq!(summary.actions[0].attempts, 2, "{summary:?}");
    assert_eq!(summary.actions[0].error_code, Some("OBS-EMAIL-SMTP"));
}
