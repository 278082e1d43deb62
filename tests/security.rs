//! Transport security and access control, end to end with real `strata`
//! processes: bearer tokens and grants on every RPC, TLS for clients and the
//! CLI, mutual TLS between nodes, produce quotas, and the limits that keep
//! idle streams and socket floods from pinning a node.
//!
//! Certificates come from a throwaway CA made with `rcgen` per test; no key
//! is checked in.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::{Node, STRATA, http_get};
use strata_client::{
    Admin, Consumer, Credentials, Error, NewTopic, Producer, ProducerRecord, StartFrom, Target,
};
use strata_proto::v1::control_client::ControlClient;
use strata_proto::v1::data_client::DataClient;
use strata_proto::v1::peer_client::PeerClient;
use strata_proto::v1::*;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// A CA and one certificate it signed, valid for 127.0.0.1 and localhost,
/// usable by a server and a client (a node is both to its peers).
struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    ca_params: rcgen::CertificateParams,
    ca_key: rcgen::KeyPair,
}

impl Pki {
    fn new(dir: &Path, name: &str) -> Pki {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose,
        };
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca.clone(), &ca_key);
        let key = KeyPair::generate().unwrap();
        let mut leaf =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        leaf.distinguished_name
            .push(DnType::CommonName, format!("{name} node"));
        leaf.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = leaf.signed_by(&key, &issuer).unwrap();
        let path = |file: &str| dir.join(format!("{name}-{file}"));
        let pki = Pki {
            ca: path("ca.pem"),
            cert: path("cert.pem"),
            key: path("key.pem"),
            ca_params: ca,
            ca_key,
        };
        std::fs::write(&pki.ca, ca_cert.pem()).unwrap();
        std::fs::write(&pki.cert, cert.pem()).unwrap();
        std::fs::write(&pki.key, key.serialize_pem()).unwrap();
        pki
    }

    /// A client certificate with subject CN `name`, signed by this CA:
    /// (certificate PEM, key PEM).
    fn client(&self, name: &str) -> (Vec<u8>, Vec<u8>) {
        use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair};
        let issuer = Issuer::new(self.ca_params.clone(), &self.ca_key);
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &issuer).unwrap();
        (cert.pem().into_bytes(), key.serialize_pem().into_bytes())
    }

    fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(&self.ca).unwrap()
    }

    fn identity(&self) -> Identity {
        Identity::from_pem(
            std::fs::read(&self.cert).unwrap(),
            std::fs::read(&self.key).unwrap(),
        )
    }

    /// `serve` flags: TLS on all three ports, this CA for peers.
    fn serve_flags(&self) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.cert.display().to_string(),
            "--tls-key".into(),
            self.key.display().to_string(),
            "--peer-ca".into(),
            self.ca.display().to_string(),
        ]
    }
}

const ADMIN_TOKEN: &str = "admin-secret-0123456789";
const READER_TOKEN: &str = "reader-secret-0123456789";
const SLOW_TOKEN: &str = "slow-writer-secret-0123456789";

/// Produce bytes per second the `slow` principal may send.
const SLOW_QUOTA_BYTES_PER_SEC: u64 = 64 * 1024;

fn hash(token: &str) -> String {
    let mut child = Command::new(STRATA)
        .args(["auth", "hash-token"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    writeln!(child.stdin.take().unwrap(), "{token}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// An auth file: an admin, a reader of `t*` topics and `g*` groups, and a
/// writer of `q*` topics with a produce quota.
fn auth_file(dir: &Path) -> PathBuf {
    let path = dir.join("auth.toml");
    let text = format!(
        r#"
[[principal]]
name = "ops"
token_sha256 = "{}"
admin = true

[[principal]]
name = "reader"
token_sha256 = "{}"
consume = ["t*"]
groups = ["g*"]

# Known by client certificate only.
[[principal]]
name = "billing"
consume = ["t*"]

[[principal]]
name = "slow"
token_sha256 = "{}"
produce = ["q*"]
consume = ["q*"]
produce_bytes_per_sec = {SLOW_QUOTA_BYTES_PER_SEC}
"#,
        hash(ADMIN_TOKEN),
        hash(READER_TOKEN),
        hash(SLOW_TOKEN)
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// A node in `dir` requiring the tokens of [`auth_file`], started with
/// `extra` flags besides.
fn node_with_auth(dir: &Path, extra: &[&str]) -> Node {
    let auth = auth_file(dir);
    let mut flags = vec!["--auth-file", auth.to_str().unwrap()];
    flags.extend_from_slice(extra);
    Node::start_with(&dir.join("n"), &flags)
}

fn with_token(node: &Node, token: &str) -> Target {
    Target::secure(
        node.bootstrap(),
        Credentials {
            token: Some(token.into()),
            ..Default::default()
        },
    )
}

fn labelled_metric(exposition: &str, series: &str) -> f64 {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in /metrics"))
}

async fn channel(addr: std::net::SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// An interceptor sending `token` (if any) as the bearer token.
fn bearer(
    token: Option<&str>,
) -> impl Fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Clone + use<> {
    let header = token.map(|t| {
        format!("Bearer {t}")
            .parse::<tonic::metadata::MetadataValue<_>>()
            .unwrap()
    });
    move |mut r: tonic::Request<()>| {
        if let Some(h) = &header {
            r.metadata_mut().insert("authorization", h.clone());
        }
        Ok(r)
    }
}

/// Calls every RPC of the Data and Control services once, with `token` (if
/// any) as the bearer token, and returns each one's status code.
async fn call_every_rpc(node: &Node, token: Option<&str>) -> Vec<(&'static str, Code)> {
    let auth = bearer(token);
    let mut data = DataClient::with_interceptor(channel(node.data).await, auth.clone());
    let mut control = ControlClient::with_interceptor(channel(node.control).await, auth);
    let code = |r: Result<(), tonic::Status>| r.err().map_or(Code::Ok, |s| s.code());
    let tp = || TopicPartition {
        topic: "t1".into(),
        partition: 0,
    };
    vec![
        (
            "Data/Produce",
            code(
                data.produce(ProduceRequest {
                    topic: "t1".into(),
                    ..Default::default()
                })
                .await
                .map(drop),
            ),
        ),
        (
            "Data/ProduceStream",
            code(
                async {
                    let requests = futures::stream::iter([ProduceRequest {
                        topic: "t1".into(),
                        ..Default::default()
                    }]);
                    let mut answers = data.produce_stream(requests).await?.into_inner();
                    answers.message().await.map(drop)
                }
                .await,
            ),
        ),
        (
            "Data/Fetch",
            code(
                data.fetch(FetchRequest {
                    positions: vec![FetchPosition {
                        topic: "t1".into(),
                        partition: 0,
                        offset: 0,
                    }],
                    ..Default::default()
                })
                .await
                .map(drop),
            ),
        ),
        (
            "Data/ListOffsets",
            code(
                data.list_offsets(ListOffsetsRequest {
                    partitions: vec![tp()],
                    ..Default::default()
                })
                .await
                .map(drop),
            ),
        ),
        (
            "Data/InitProducer",
            code(
                data.init_producer(InitProducerRequest::default())
                    .await
                    .map(drop),
            ),
        ),
        (
            "Data/Heartbeat",
            code(
                data.heartbeat(HeartbeatRequest {
                    group: "g1".into(),
                    topics: vec!["t1".into()],
                    assignor: "range".into(),
                    ..Default::default()
                })
                .await
                .map(drop),
            ),
        ),
        (
            "Data/LeaveGroup",
            code(
                data.leave_group(LeaveGroupRequest {
                    group: "g1".into(),
                    ..Default::default()
                })
                .await
                .map(drop),
            ),
        ),
        (
            "Data/CommitOffsets",
            code(
                data.commit_offsets(CommitOffsetsRequest {
                    group: "g1".into(),
                    ..Default::default()
                })
                .await
                .map(drop),
            ),
        ),
        (
            "Data/FetchOffsets",
            code(
                data.fetch_offsets(FetchOffsetsRequest {
                    group: "g1".into(),
                    ..Default::default()
                })
                .await
                .map(drop),
            ),
        ),
        (
            "Control/CreateTopic",
            code(
                control
                    .create_topic(CreateTopicRequest {
                        name: "x1".into(),
                        config: Some(TopicConfig {
                            partitions: 1,
                            ..Default::default()
                        }),
                    })
                    .await
                    .map(drop),
            ),
        ),
        (
            "Control/DeleteTopic",
            code(
                control
                    .delete_topic(DeleteTopicRequest { name: "x1".into() })
                    .await
                    .map(drop),
            ),
        ),
        (
            "Control/ListTopics",
            code(
                control
                    .list_topics(ListTopicsRequest::default())
                    .await
                    .map(drop),
            ),
        ),
        (
            "Control/DescribeTopic",
            code(
                control
                    .describe_topic(DescribeTopicRequest { name: "t1".into() })
                    .await
                    .map(drop),
            ),
        ),
        (
            "Control/Metadata",
            code(control.metadata(MetadataRequest::default()).await.map(drop)),
        ),
        (
            "Control/ClusterStatus",
            code(
                control
                    .cluster_status(ClusterStatusRequest::default())
                    .await
                    .map(drop),
            ),
        ),
        (
            "Control/ListGroups",
            code(
                control
                    .list_groups(ListGroupsRequest::default())
                    .await
                    .map(drop),
            ),
        ),
        (
            "Control/DescribeGroup",
            code(
                control
                    .describe_group(DescribeGroupRequest { group: "g1".into() })
                    .await
                    .map(drop),
            ),
        ),
        (
            "Control/AddNode",
            code(control.add_node(AddNodeRequest::default()).await.map(drop)),
        ),
        (
            "Control/RemoveNode",
            code(
                control
                    .remove_node(RemoveNodeRequest::default())
                    .await
                    .map(drop),
            ),
        ),
    ]
}

/// The RPCs the proto declares for `service`, so a new RPC without a check
/// in `call_every_rpc` fails the test.
fn declared_rpcs(service: &str) -> Vec<String> {
    let proto = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("proto/proto/strata.proto"),
    )
    .unwrap();
    let body = proto
        .split(&format!("service {service} {{"))
        .nth(1)
        .and_then(|rest| rest.split('}').next())
        .unwrap_or_else(|| panic!("no service {service} in the proto"));
    body.lines()
        .filter_map(|l| l.trim().strip_prefix("rpc "))
        .map(|l| format!("{service}/{}", l.split('(').next().unwrap().trim()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_without_a_valid_token_is_unauthenticated() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with_auth(dir.path(), &[]);
    let mut declared = declared_rpcs("Data");
    declared.extend(declared_rpcs("Control"));
    for token in [None, Some("not-a-token"), Some("")] {
        let results = call_every_rpc(&node, token).await;
        let called: Vec<String> = results.iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(called, declared, "every declared RPC is called");
        for (rpc, code) in results {
            assert_eq!(code, Code::Unauthenticated, "{rpc} with token {token:?}");
        }
    }
    // With a valid token the same calls get past the door (they may still
    // fail on their own merits, but not as unauthenticated).
    for (rpc, code) in call_every_rpc(&node, Some(ADMIN_TOKEN)).await {
        assert_ne!(code, Code::Unauthenticated, "{rpc} with the admin token");
        assert_ne!(code, Code::PermissionDenied, "{rpc} with the admin token");
    }
    // Health stays open and cheap.
    assert_eq!(http_get(node.control, "/healthz").0, 200);
    let mut health =
        tonic_health::pb::health_client::HealthClient::new(channel(node.control).await);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("health needs no token");
    assert_eq!(status.into_inner().status, 1, "SERVING");
    // The CLI without a token says why, and exits non-zero.
    let out = common::cli(&node.bootstrap(), &["topic", "list"], None);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("token"), "{stderr}");
    // Refusals are logged without the token, and not one line each: a
    // client looping bad requests must not fill the disk with the log.
    let log = node.log();
    assert!(!log.contains("not-a-token"));
    let (_, metrics) = http_get(node.control, "/metrics");
    let refused = labelled_metric(
        &metrics,
        "strata_auth_denied_total{reason=\"unauthenticated\"}",
    );
    assert!(refused >= 54.0, "{refused} refusals counted");
    let lines = log.matches("request refused").count();
    assert!(
        (1..=(refused as usize) / 4).contains(&lines),
        "{lines} log lines for {refused} refusals"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consume_only_token_reads_but_cannot_produce_or_administer() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with_auth(dir.path(), &[]);
    let denied = || {
        labelled_metric(
            &http_get(node.control, "/metrics").1,
            "strata_auth_denied_total{reason=\"permission_denied\"}",
        )
    };
    let denied_before = denied();

    // The admin creates and deletes topics, and writes.
    let admin = Admin::connect(with_token(&node, ADMIN_TOKEN))
        .await
        .unwrap();
    admin
        .create_topic("t-orders", NewTopic::new(1))
        .await
        .unwrap();
    admin
        .create_topic("t-scratch", NewTopic::new(1))
        .await
        .unwrap();
    admin.delete_topic("t-scratch").await.unwrap();
    let producer = Producer::builder(with_token(&node, ADMIN_TOKEN))
        .build()
        .await
        .unwrap();
    for i in 0..10 {
        producer
            .send(ProducerRecord::new("t-orders", format!("v{i}")))
            .await
            .unwrap();
    }

    // The reader fetches...
    let consumer = Consumer::builder(with_token(&node, READER_TOKEN))
        .topics(["t-orders"])
        .start_from(StartFrom::Earliest)
        .build()
        .await
        .unwrap();
    for i in 0..10 {
        let record = tokio::time::timeout(Duration::from_secs(30), consumer.next_record())
            .await
            .expect("the reader reads")
            .unwrap()
            .unwrap();
        assert_eq!(record.value.as_deref(), Some(format!("v{i}").as_bytes()));
    }

    // ...but cannot create topics or produce, and is told so at once.
    let reader = Admin::connect(with_token(&node, READER_TOKEN))
        .await
        .unwrap();
    let err = reader
        .create_topic("t-new", NewTopic::new(1))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::PermissionDenied(_)), "{err:?}");
    assert!(!err.is_retriable());
    let err = reader.delete_topic("t-orders").await.unwrap_err();
    assert!(matches!(err, Error::PermissionDenied(_)), "{err:?}");
    let producer = Producer::builder(with_token(&node, READER_TOKEN))
        .build()
        .await
        .unwrap();
    let started = Instant::now();
    let err = producer
        .send(ProducerRecord::new("t-orders", "forged"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::PermissionDenied(_)), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "not retried until the delivery timeout"
    );
    // A topic outside its grants cannot be read either.
    let denied_consumer = Consumer::builder(with_token(&node, READER_TOKEN))
        .topics(["t-orders", "secret"])
        .start_from(StartFrom::Earliest)
        .build()
        .await;
    if let Ok(c) = denied_consumer {
        let next = tokio::time::timeout(Duration::from_secs(30), c.next_record()).await;
        assert!(
            matches!(next, Ok(Some(Err(_)))),
            "reading an ungranted topic fails: {next:?}"
        );
    }

    // Through the CLI, with the token from the environment.
    let out = Command::new(STRATA)
        .args(["topic", "create", "t-cli", "--partitions", "1"])
        .args(["--bootstrap", &node.bootstrap()])
        .env("STRATA_TOKEN", READER_TOKEN)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("permission denied"), "{stderr}");
    assert!(!stderr.contains(READER_TOKEN));
    let out = Command::new(STRATA)
        .args(["topic", "create", "t-cli", "--partitions", "1"])
        .args(["--bootstrap", &node.bootstrap()])
        .env("STRATA_TOKEN", ADMIN_TOKEN)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Every refusal is counted; the token never reaches the log.
    assert!(
        denied() >= denied_before + 4.0,
        "{} then {}",
        denied_before,
        denied()
    );
    let log = node.log();
    assert!(log.contains("permission denied"), "denials are logged");
    for token in [ADMIN_TOKEN, READER_TOKEN] {
        assert!(!log.contains(token), "a token leaked into the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_round_trip_through_the_client_and_the_cli_and_plaintext_is_refused_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "cluster");
    let flags = pki.serve_flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let node = Node::start_with(&dir.path().join("n"), &flags);
    let secure = Target::secure(
        node.bootstrap(),
        Credentials {
            tls_ca_pem: Some(pki.ca_pem()),
            ..Default::default()
        },
    );

    // The client crate.
    let admin = Admin::connect(secure.clone()).await.unwrap();
    admin.create_topic("tls", NewTopic::new(2)).await.unwrap();
    let producer = Producer::builder(secure.clone()).build().await.unwrap();
    let mut acked = Vec::new();
    for i in 0..20 {
        let meta = producer
            .send(ProducerRecord::new("tls", format!("r{i}")))
            .await
            .unwrap();
        acked.push((meta.partition, meta.offset.unwrap()));
    }
    let consumer = Consumer::builder(secure.clone())
        .topics(["tls"])
        .start_from(StartFrom::Earliest)
        .build()
        .await
        .unwrap();
    let mut seen = Vec::new();
    while seen.len() < acked.len() {
        let r = tokio::time::timeout(Duration::from_secs(30), consumer.next_record())
            .await
            .expect("records arrive over TLS")
            .unwrap()
            .unwrap();
        seen.push((r.partition, r.offset));
    }
    seen.sort();
    acked.sort();
    assert_eq!(seen, acked);

    // The CLI with --tls-ca.
    let ca = pki.ca.to_str().unwrap();
    let out = common::cli(
        &node.bootstrap(),
        &["produce", "tls", "--partition", "0", "--tls-ca", ca],
        Some("cli-1\ncli-2\n"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = common::cli(
        &node.bootstrap(),
        &[
            "consume",
            "tls",
            "--from-beginning",
            "--until-end",
            "--tls-ca",
            ca,
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("cli-1") && stdout.contains("cli-2") && stdout.contains("r19"));

    // A plaintext client gets a clear error in bounded time, not a hang.
    let started = Instant::now();
    let plain = tokio::time::timeout(Duration::from_secs(30), Admin::connect(node.bootstrap()))
        .await
        .expect("a plaintext client against TLS fails, it does not hang");
    let Err(err) = plain else {
        panic!("plaintext is refused")
    };
    eprintln!("plaintext client: {err} after {:?}", started.elapsed());
    let out = common::cli(&node.bootstrap(), &["topic", "list"], None);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("TLS"), "the error points at TLS: {stderr}");

    // A client trusting another CA refuses the broker.
    let other = Pki::new(dir.path(), "other");
    let out = common::cli(
        &node.bootstrap(),
        &["topic", "list", "--tls-ca", other.ca.to_str().unwrap()],
        None,
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("certificate"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verified_client_certificate_names_its_principal() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "cluster");
    // Client certificates come from a CA of their own: one the peer CA also
    // is would make every client a cluster node (refused below).
    let clients = Pki::new(dir.path(), "clients");
    let auth = auth_file(dir.path());
    let mut flags = pki.serve_flags();
    flags.extend([
        "--tls-client-ca".to_string(),
        clients.ca.display().to_string(),
        "--auth-file".to_string(),
        auth.display().to_string(),
    ]);
    let same_ca = Command::new(STRATA)
        .args(["serve", "--data-dir"])
        .arg(dir.path().join("same-ca"))
        .args(pki.serve_flags())
        .args(["--tls-client-ca", pki.ca.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!same_ca.status.success());
    let stderr = String::from_utf8_lossy(&same_ca.stderr);
    assert!(stderr.contains("same CA"), "{stderr}");
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let node = Node::start_with(&dir.path().join("n"), &flags);
    let as_client = |cert: Option<(Vec<u8>, Vec<u8>)>, token: Option<&str>| {
        let (tls_cert_pem, tls_key_pem) = cert.map_or((None, None), |(c, k)| (Some(c), Some(k)));
        Target::secure(
            node.bootstrap(),
            Credentials {
                tls_ca_pem: Some(pki.ca_pem()),
                tls_cert_pem,
                tls_key_pem,
                token: token.map(str::to_owned),
                ..Default::default()
            },
        )
    };
    // Known by its certificate: reads metadata, may not administer.
    let billing = Admin::connect(as_client(Some(clients.client("billing")), None))
        .await
        .unwrap();
    billing.list_topics().await.unwrap();
    let err = billing
        .create_topic("t-billing", NewTopic::new(1))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::PermissionDenied(_)), "{err:?}");
    assert!(err.to_string().contains("billing"), "{err}");
    // A token sent with the certificate wins.
    let admin = Admin::connect(as_client(
        Some(clients.client("billing")),
        Some(ADMIN_TOKEN),
    ))
    .await
    .unwrap();
    admin
        .create_topic("t-billing", NewTopic::new(1))
        .await
        .unwrap();
    // A malformed authorization header is refused, not read as no token
    // (which would let the certificate authenticate the request).
    let (cert, key) = clients.client("billing");
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(pki.ca_pem()))
        .identity(Identity::from_pem(cert, key));
    let channel = Endpoint::from_shared(format!("https://{}", node.control))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let basic = |mut r: tonic::Request<()>| {
        r.metadata_mut()
            .insert("authorization", "Basic YmlsbGluZzo=".parse().unwrap());
        Ok(r)
    };
    let refused = ControlClient::with_interceptor(channel, basic)
        .list_topics(ListTopicsRequest {})
        .await
        .expect_err("a malformed authorization header is refused");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert!(refused.message().contains("Bearer"), "{refused:?}");
    // A certificate naming no principal, or none at all, is not enough.
    for cert in [Some(clients.client("nobody")), None] {
        let err = Admin::connect(as_client(cert, None)).await.err().unwrap();
        assert!(matches!(err, Error::Unauthenticated(_)), "{err:?}");
    }
    // A certificate from another CA fails the handshake.
    let other = Pki::new(dir.path(), "other");
    let refused = tokio::time::timeout(
        Duration::from_secs(30),
        Admin::connect(as_client(Some(other.client("billing")), None)),
    )
    .await
    .expect("refused in bounded time");
    assert!(refused.is_err());
    // A client certificate is not a node's: the peer port refuses it.
    let (cert, key) = clients.client("billing");
    let as_peer = hello(node.peer, &pki, Some(Identity::from_pem(cert, key))).await;
    assert!(
        as_peer.is_err(),
        "a client certificate passed as a node: {as_peer:?}"
    );
}

/// A peer client presenting `identity` (if any), trusting `ca`.
async fn hello(
    addr: std::net::SocketAddr,
    ca: &Pki,
    identity: Option<Identity>,
) -> Result<u32, String> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca.ca_pem()));
    if let Some(id) = identity {
        tls = tls.identity(id);
    }
    let endpoint = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .tls_config(tls)
        .unwrap();
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    PeerClient::new(channel)
        .hello(HelloRequest { node_id: 99 })
        .await
        .map(|r| r.into_inner().node_id)
        .map_err(|s| format!("{s:?}"))
}

#[test]
fn peers_use_mutual_tls_and_a_node_without_the_cluster_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "cluster");
    let (cert, key, ca) = (
        pki.cert.to_str().unwrap(),
        pki.key.to_str().unwrap(),
        pki.ca.to_str().unwrap(),
    );
    // Peers only: clients stay on plaintext so the cluster helpers work.
    let cluster = Cluster::start_with(
        3,
        &["--peer-cert", cert, "--peer-key", key, "--peer-ca", ca],
    );
    let bootstrap = cluster.control_addrs().join(",");
    cluster.rt.block_on(async {
        let admin = Admin::connect(bootstrap.as_str()).await.unwrap();
        admin
            .create_topic("rf3", NewTopic::new(1).replication_factor(3))
            .await
            .unwrap();
        let producer = Producer::builder(bootstrap.as_str()).build().await.unwrap();
        for i in 0..20 {
            let meta = producer
                .send(ProducerRecord::new("rf3", format!("m{i}")))
                .await
                .expect("acked by a quorum over mutual TLS");
            assert_eq!(meta.offset, Some(i));
        }
    });
    cluster.wait_converged("rf3", &[0, 1, 2], Duration::from_secs(30));

    // Straight at a node's peer port: the cluster certificate gets through...
    let peer = cluster.nodes[0].peer;
    let rogue = Pki::new(dir.path(), "rogue");
    cluster.rt.block_on(async {
        assert_eq!(hello(peer, &pki, Some(pki.identity())).await, Ok(1));
        // ...a certificate from another CA, none at all, or plaintext do not.
        let refused = hello(peer, &pki, Some(rogue.identity())).await;
        assert!(refused.is_err(), "another CA's certificate: {refused:?}");
        let refused = hello(peer, &pki, None).await;
        assert!(refused.is_err(), "no client certificate: {refused:?}");
        let plain = async {
            let channel = Endpoint::from_shared(format!("http://{peer}"))
                .unwrap()
                .timeout(Duration::from_secs(10))
                .connect()
                .await
                .map_err(|e| e.to_string())?;
            PeerClient::new(channel)
                .hello(HelloRequest { node_id: 99 })
                .await
                .map_err(|e| e.to_string())
        };
        assert!(plain.await.is_err(), "plaintext peer traffic");
    });

    // A whole node with the wrong CA's certificate cannot join.
    let rogue_dir = dir.path().join("rogue-node");
    let peers: Vec<String> = cluster
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| format!("{}={}", i + 1, n.peer))
        .chain(std::iter::once("4=127.0.0.1:0".to_string()))
        .collect();
    let peers = peers.join(",");
    let rogue_node = Node::start_listening(
        &rogue_dir,
        &[
            "--node-id",
            "4",
            "--join",
            "--peers",
            &peers,
            "--peer-cert",
            rogue.cert.to_str().unwrap(),
            "--peer-key",
            rogue.key.to_str().unwrap(),
            "--peer-ca",
            rogue.ca.to_str().unwrap(),
        ],
    );
    cluster.rt.block_on(async {
        let admin = Admin::connect(bootstrap.as_str()).await.unwrap();
        // Whether the membership change itself goes through depends on
        // openraft's catch-up threshold (see docs/operations.md); either way
        // no byte of Raft traffic reaches the rogue node.
        let added = tokio::time::timeout(
            Duration::from_secs(20),
            admin.add_node(4, &rogue_node.peer.to_string(), false),
        )
        .await;
        eprintln!("adding the rogue node: {added:?}");
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_ne!(
            http_get(rogue_node.control, "/readyz").0,
            200,
            "the rogue node received the cluster's state"
        );
        let refused = cluster
            .nodes
            .iter()
            .any(|n| n.log().contains("invalid peer certificate: UnknownIssuer"));
        assert!(refused, "the cluster refused the rogue's certificate");
        // The cluster still serves.
        let producer = Producer::builder(bootstrap.as_str()).build().await.unwrap();
        let meta = tokio::time::timeout(
            Duration::from_secs(60),
            producer.send(ProducerRecord::new("rf3", "after")),
        )
        .await
        .expect("the cluster still serves")
        .unwrap();
        assert_eq!(meta.offset, Some(20));
    });
}

const QUOTA_RECORD_BYTES: usize = 1024;
const QUOTA_RECORDS: usize = 512;
const QUOTA_BATCH_BYTES: usize = 16 * 1024;

/// Produces `QUOTA_RECORDS` records to `topic` as `target`, checks that
/// every one is acked and then read back exactly once, where it was acked,
/// and returns how long producing took.
async fn produce_and_read_back(target: Target, topic: &str) -> Duration {
    let producer = Producer::builder(target.clone())
        .batch_size(QUOTA_BATCH_BYTES)
        .build()
        .await
        .unwrap();
    let started = Instant::now();
    let mut deliveries = Vec::with_capacity(QUOTA_RECORDS);
    for i in 0..QUOTA_RECORDS {
        let mut value = format!("{i:08}").into_bytes();
        value.resize(QUOTA_RECORD_BYTES, b'.');
        deliveries.push(
            producer
                .enqueue(ProducerRecord::new(topic, value))
                .await
                .unwrap(),
        );
    }
    let mut acked = Vec::with_capacity(QUOTA_RECORDS);
    for (i, d) in deliveries.into_iter().enumerate() {
        let meta = d.await.unwrap_or_else(|e| panic!("record {i} failed: {e}"));
        acked.push((meta.partition, meta.offset.unwrap(), i));
    }
    let elapsed = started.elapsed();

    let consumer = Consumer::builder(target)
        .topics([topic])
        .start_from(StartFrom::Earliest)
        .build()
        .await
        .unwrap();
    let mut seen = Vec::with_capacity(QUOTA_RECORDS);
    while seen.len() < QUOTA_RECORDS {
        let r = tokio::time::timeout(Duration::from_secs(30), consumer.next_record())
            .await
            .expect("every record arrives")
            .unwrap()
            .unwrap();
        let value = r.value.unwrap();
        let i: usize = std::str::from_utf8(&value[..8]).unwrap().parse().unwrap();
        seen.push((r.partition, r.offset, i));
    }
    seen.sort();
    acked.sort();
    assert_eq!(seen, acked, "each acked record once, where it was acked");
    // Nothing more: no duplicates past the acked ones.
    let more = tokio::time::timeout(Duration::from_secs(2), consumer.next_record()).await;
    assert!(more.is_err(), "an unexpected extra record: {more:?}");
    elapsed
}

/// The least time `QUOTA_RECORDS` records can take at `bytes_per_sec`: one
/// second of burst and the last batch may go unpaid; the rest waits. (No
/// upper bound: machines are noisy.)
fn quota_floor(bytes_per_sec: u64) -> f64 {
    let total = (QUOTA_RECORDS * QUOTA_RECORD_BYTES) as u64;
    (total - bytes_per_sec - 2 * QUOTA_BATCH_BYTES as u64) as f64 / bytes_per_sec as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_over_its_quota_is_throttled_not_disconnected_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with_auth(dir.path(), &[]);
    let admin = Admin::connect(with_token(&node, ADMIN_TOKEN))
        .await
        .unwrap();
    admin.create_topic("quota", NewTopic::new(2)).await.unwrap();
    let elapsed = produce_and_read_back(with_token(&node, SLOW_TOKEN), "quota").await;
    let floor = quota_floor(SLOW_QUOTA_BYTES_PER_SEC);
    assert!(
        elapsed.as_secs_f64() >= floor,
        "at {SLOW_QUOTA_BYTES_PER_SEC} B/s producing took only {elapsed:?} (floor {floor:.1} s)"
    );
    let (_, metrics) = http_get(node.control, "/metrics");
    assert!(common::metric(&metrics, "strata_quota_throttled_total").unwrap() > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_over_its_byte_rate_is_slowed_not_disconnected_and_loses_nothing() {
    const RATE: u64 = 64 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start_with(
        &dir.path().join("n"),
        &["--connection-max-bytes-per-sec", &RATE.to_string()],
    );
    let admin = Admin::connect(node.bootstrap()).await.unwrap();
    admin.create_topic("slow", NewTopic::new(2)).await.unwrap();
    let elapsed = produce_and_read_back(node.bootstrap().into(), "slow").await;
    let floor = quota_floor(RATE);
    assert!(
        elapsed.as_secs_f64() >= floor,
        "at {RATE} B/s per connection producing took only {elapsed:?} (floor {floor:.1} s)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_fetch_stream_is_closed_and_extra_connections_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start_with(
        &dir.path().join("n"),
        &["--fetch-idle-timeout-ms", "1000", "--max-connections", "3"],
    );
    const RECORD_BYTES: usize = 64 * 1024;
    const RECORDS: usize = 128; // 8 MiB: far more than the windows below hold.
    {
        let admin = Admin::connect(node.bootstrap()).await.unwrap();
        admin.create_topic("idle", NewTopic::new(1)).await.unwrap();
        let producer = Producer::builder(node.bootstrap()).build().await.unwrap();
        let mut deliveries = Vec::new();
        for _ in 0..RECORDS {
            deliveries.push(
                producer
                    .enqueue(ProducerRecord::new("idle", vec![b'x'; RECORD_BYTES]))
                    .await
                    .unwrap(),
            );
        }
        for d in deliveries {
            d.await.unwrap();
        }
        producer.close().await.unwrap();
    }

    // A consumer that opens a stream and stops reading.
    let channel = Endpoint::from_shared(format!("http://{}", node.data))
        .unwrap()
        .initial_stream_window_size(64 * 1024)
        .initial_connection_window_size(64 * 1024)
        .connect()
        .await
        .unwrap();
    let mut data = DataClient::new(channel).max_decoding_message_size(16 * 1024 * 1024);
    let mut stream = data
        .fetch(FetchRequest {
            positions: vec![FetchPosition {
                topic: "idle".into(),
                partition: 0,
                offset: 0,
            }],
            max_bytes: 256 * 1024,
            max_wait_ms: 0,
        })
        .await
        .unwrap()
        .into_inner();
    tokio::time::sleep(Duration::from_secs(4)).await;
    // Reading again: what was in flight arrives, then the stream ends with
    // the idle error instead of delivering everything.
    let mut received = 0usize;
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match stream.message().await {
                Ok(Some(m)) => received += m.records.len(),
                Ok(None) => return None,
                Err(status) => return Some(status),
            }
        }
    })
    .await
    .expect("the idle stream was closed, not kept open");
    let status = ended.expect("closed with a status");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("read nothing"), "{status:?}");
    assert!(
        received < RECORDS * RECORD_BYTES,
        "not everything was streamed"
    );
    drop(stream);
    drop(data);

    // Three connections to the control port are all it takes.
    let control = node.control;
    let mut held: Vec<std::net::TcpStream> = (0..3)
        .map(|_| std::net::TcpStream::connect(control).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut extra = std::net::TcpStream::connect(control).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    use std::io::Read;
    let mut buf = [0u8; 16];
    let started = Instant::now();
    match extra.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!(
            "the extra connection stayed open: {other:?} after {:?}",
            started.elapsed()
        ),
    }
    // The held ones are still open (nothing to read, no EOF).
    held[0]
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let still_open = held[0].read(&mut buf);
    assert!(
        matches!(&still_open, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
        "{still_open:?}"
    );
    // Closing one frees its slot.
    held.truncate(2);
    let deadline = Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        if let Ok(response) = std::panic::catch_unwind(|| http_get(control, "/metrics")) {
            if response.0 == 200 {
                break response.1;
            }
        }
        assert!(Instant::now() < deadline, "the freed slot was never reused");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(common::metric(&metrics, "strata_connections_refused_total").unwrap() >= 1.0);
    assert!(common::metric(&metrics, "strata_fetch_idle_closed_total").unwrap() >= 1.0);
}

/// Access control in a cluster whose peer port trusts every connection would
/// be for show (anyone reaching it could change the cluster): `serve`
/// refuses the combination and says what to add.
#[test]
fn a_cluster_with_auth_but_no_peer_tls_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let auth = auth_file(dir.path());
    let out = Command::new(STRATA)
        .args(["serve", "--node-id", "1", "--data-dir"])
        .arg(dir.path().join("n1"))
        .args(["--peers", "1=127.0.0.1:1,2=127.0.0.1:2,3=127.0.0.1:3"])
        .arg("--auth-file")
        .arg(&auth)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--peer-ca"), "{stderr}");
}

/// A group may hold offsets of topics a caller of the group cannot read:
/// FetchOffsets leaves those out (CommitOffsets already refuses them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_offsets_leaves_out_topics_the_caller_cannot_read() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with_auth(dir.path(), &[]);
    let admin = Admin::connect(with_token(&node, ADMIN_TOKEN))
        .await
        .unwrap();
    for topic in ["t-visible", "q-hidden"] {
        admin.create_topic(topic, NewTopic::new(1)).await.unwrap();
    }
    let offset = |topic: &str| PartitionOffset {
        topic: topic.into(),
        partition: 0,
        offset: 0,
        metadata: String::new(),
    };
    let mut admin_data =
        DataClient::with_interceptor(channel(node.data).await, bearer(Some(ADMIN_TOKEN)));
    admin_data
        .commit_offsets(CommitOffsetsRequest {
            group: "g-mixed".into(),
            offsets: vec![offset("t-visible"), offset("q-hidden")],
            ..Default::default()
        })
        .await
        .unwrap();
    let request = || FetchOffsetsRequest {
        group: "g-mixed".into(),
        partitions: Vec::new(),
    };
    let topics = |r: FetchOffsetsResponse| -> Vec<String> {
        let mut t: Vec<String> = r.offsets.into_iter().map(|o| o.topic).collect();
        t.sort();
        t
    };
    let as_admin = admin_data
        .fetch_offsets(request())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(topics(as_admin), ["q-hidden", "t-visible"]);
    let as_reader =
        DataClient::with_interceptor(channel(node.data).await, bearer(Some(READER_TOKEN)))
            .fetch_offsets(request())
            .await
            .unwrap()
            .into_inner();
    assert_eq!(topics(as_reader), ["t-visible"]);
}

/// A node with authentication, two connection slots per port and an auth
/// deadline of 500 ms.
fn two_slot_node_with_a_short_auth_deadline(dir: &Path) -> Node {
    node_with_auth(
        dir,
        &["--auth-deadline-ms", "500", "--max-connections", "2"],
    )
}

/// Connections the node's listeners refused at once, being full.
fn refused_connections(node: &Node) -> f64 {
    let (_, metrics) = http_get(node.control, "/metrics");
    common::metric(&metrics, "strata_connections_refused_total").unwrap_or(0.0)
}

/// With authentication on, a connection that makes no authenticated
/// request is closed after the auth deadline, so anonymous sockets cannot
/// hold a port's connection slots; one that did stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_without_an_authenticated_request_are_closed_after_the_deadline() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let node = two_slot_node_with_a_short_auth_deadline(dir.path());
    // An authenticated client takes one slot of the data port.
    let mut data =
        DataClient::with_interceptor(channel(node.data).await, bearer(Some(ADMIN_TOKEN)));
    data.init_producer(InitProducerRequest {}).await.unwrap();

    // An anonymous socket takes the other, and is closed after the deadline.
    let mut anonymous = std::net::TcpStream::connect(node.data).unwrap();
    anonymous
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 256];
    loop {
        match anonymous.read(&mut buf) {
            Ok(0) => break,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            // The server's HTTP/2 preface, if it sends one.
            Ok(_) => continue,
            Err(e) => panic!(
                "an anonymous connection was still open after {:?}: {e}",
                started.elapsed()
            ),
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The authenticated connection is still open: of two new sockets, one
    // gets the free slot and the other is refused at once.
    let refused = || refused_connections(&node);
    let before = refused();
    let _more: Vec<std::net::TcpStream> = (0..2)
        .map(|_| std::net::TcpStream::connect(node.data).unwrap())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    while refused() < before + 1.0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        refused(),
        before + 1.0,
        "the authenticated connection was closed with the anonymous one"
    );
    data.init_producer(InitProducerRequest {}).await.unwrap();
}

/// An open endpoint (a health check needs no token) does not keep an
/// anonymous connection past the auth deadline: otherwise one health check
/// per socket would let anyone hold every slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_health_check_does_not_keep_an_anonymous_connection_open() {
    let dir = tempfile::tempdir().unwrap();
    let node = two_slot_node_with_a_short_auth_deadline(dir.path());
    // An open path, sent without a token on the data port (which serves no
    // health service, but the path passes the gate all the same).
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel(node.data).await);
    let _ = health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // Its connection was closed at the deadline: two new sockets both get a
    // slot, none is refused.
    let refused = || refused_connections(&node);
    let before = refused();
    let _two: Vec<std::net::TcpStream> = (0..2)
        .map(|_| std::net::TcpStream::connect(node.data).unwrap())
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        refused(),
        before,
        "a health check kept an anonymous connection's slot"
    );
}
