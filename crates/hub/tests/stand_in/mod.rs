//! A stand-in for the Hugging Face Hub on 127.0.0.1, for tests: dataset
//! repositories serving parquet files generated here in the public
//! datasets' schemas, and the model-repository endpoints an upload uses
//! (create, preupload, commit). Shared by the hub crate's tests and the
//! command-line tests (`xtask/tests/fetch.rs`, through `#[path]`); each
//! uses a part of it.
#![allow(dead_code)]

use parquet::basic::Compression;
use parquet::data_type::{BoolType, ByteArray, ByteArrayType, Int64Type};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

pub const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
pub const TOKEN: &str = "hf_testtoken_do_not_print_1234";

/// What the server holds and what it was asked.
#[derive(Default)]
pub struct State {
    /// repo prefix ("datasets/owner/name" or "owner/name") -> path -> bytes.
    pub repos: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    /// "METHOD path" of every request.
    pub log: Vec<String>,
    /// Bodies of POST /api/repos/create.
    pub created: Vec<serde_json::Value>,
    /// NDJSON lines of each commit.
    pub commits: Vec<Vec<serde_json::Value>>,
    /// Authorization headers seen.
    pub auth: Vec<String>,
}

pub struct Server {
    pub url: String,
    pub server: Arc<tiny_http::Server>,
    pub thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn header(name: &str, value: &str) -> tiny_http::Header {
    tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()).unwrap()
}

pub fn json(v: serde_json::Value) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    tiny_http::Response::from_data(serde_json::to_vec(&v).unwrap())
        .with_header(header("Content-Type", "application/json"))
}

pub fn etag(bytes: &[u8]) -> String {
    // A content-derived tag is all the client needs from an ETag.
    let mut h: u64 = 0xcbf29ce484222325;
    for &b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}{:08x}", bytes.len())
}

pub fn handle(state: &Mutex<State>, mut req: tiny_http::Request) {
    let method = req.method().to_string();
    let url = req.url().to_string();
    let path = url.split('?').next().unwrap_or("").to_string();
    let mut body = Vec::new();
    let _ = req.as_reader().read_to_end(&mut body);
    let mut st = state.lock().unwrap();
    st.log.push(format!("{method} {path}"));
    if let Some(a) = req
        .headers()
        .iter()
        .find(|h| h.field.equiv("Authorization"))
    {
        st.auth.push(a.value.to_string());
    }
    let not_found = || {
        tiny_http::Response::from_data(b"{\"error\":\"not found\"}".to_vec())
            .with_status_code(404)
            .with_header(header("X-Error-Code", "EntryNotFound"))
    };
    // GET /api/datasets/<owner>/<name>/tree/main
    if let Some(rest) = path.strip_prefix("/api/datasets/") {
        if let Some(repo) = rest.strip_suffix("/tree/main") {
            let Some(files) = st.repos.get(&format!("datasets/{repo}")) else {
                let _ =
                    req.respond(not_found().with_header(header("X-Error-Code", "RepoNotFound")));
                return;
            };
            let entries: Vec<serde_json::Value> = files
                .iter()
                .map(|(p, b)| serde_json::json!({"type": "file", "oid": etag(b), "size": b.len(), "path": p}))
                .collect();
            let _ = req.respond(json(serde_json::Value::Array(entries)));
            return;
        }
    }
    if method == "POST" && path == "/api/repos/create" {
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let repo = format!(
            "{}/{}",
            v["organization"].as_str().unwrap_or(""),
            v["name"].as_str().unwrap_or("")
        );
        st.repos.entry(repo.clone()).or_default();
        st.created.push(v);
        let _ = req.respond(json(
            serde_json::json!({"url": format!("http://hub/{repo}")}),
        ));
        return;
    }
    if let Some(rest) = path.strip_prefix("/api/models/") {
        if let Some(repo) = rest.strip_suffix("/preupload/main") {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let files: Vec<serde_json::Value> = v["files"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| serde_json::json!({"path": f["path"], "uploadMode": "regular"}))
                .collect();
            let _ = repo;
            let _ = req.respond(json(serde_json::json!({ "files": files })));
            return;
        }
        if let Some(repo) = rest.strip_suffix("/commit/main") {
            let lines: Vec<serde_json::Value> = body
                .split(|&b| b == b'\n')
                .filter(|l| !l.is_empty())
                .map(|l| serde_json::from_slice(l).unwrap())
                .collect();
            use base64::Engine as _;
            let decode = |b64: &str| {
                base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .unwrap()
            };
            let files = st.repos.entry(repo.to_string()).or_default();
            for l in &lines {
                if l["key"] == "file" {
                    let v = &l["value"];
                    files.insert(
                        v["path"].as_str().unwrap().to_string(),
                        decode(v["content"].as_str().unwrap()),
                    );
                }
            }
            st.commits.push(lines);
            let _ = req.respond(json(serde_json::json!({
                "commitUrl": format!("http://hub/{repo}/commit/{COMMIT}"),
                "commitOid": COMMIT,
            })));
            return;
        }
    }
    // HEAD/GET /<prefix>/resolve/main/<file>
    if let Some((repo, file)) = path.trim_start_matches('/').split_once("/resolve/main/") {
        let bytes = st.repos.get(repo).and_then(|r| r.get(file)).cloned();
        let Some(bytes) = bytes else {
            let _ = req.respond(not_found());
            return;
        };
        let etag = format!("\"{}\"", etag(&bytes));
        let len = bytes.len().to_string();
        let data = if method == "HEAD" { Vec::new() } else { bytes };
        let resp = tiny_http::Response::new(
            tiny_http::StatusCode(200),
            vec![
                header("ETag", &etag),
                header("X-Repo-Commit", COMMIT),
                header("X-Linked-Size", &len),
            ],
            std::io::Cursor::new(data.clone()),
            Some(if method == "HEAD" {
                len.parse().unwrap()
            } else {
                data.len()
            }),
            None,
        );
        let _ = req.respond(resp);
        return;
    }
    let _ = req.respond(not_found());
}

pub fn start(state: Arc<Mutex<State>>) -> Server {
    let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
    let url = format!("http://{}", server.server_addr().to_ip().unwrap());
    let (s2, st2) = (server.clone(), state);
    let thread = std::thread::spawn(move || {
        while let Ok(req) = s2.recv() {
            handle(&st2, req);
        }
    });
    Server {
        url,
        server,
        thread: Some(thread),
    }
}

/// A PNG of `w` x `h` pixels, all `shade` (RGB or gray).
pub fn png(w: u32, h: u32, shade: u8, rgb: bool) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    if rgb {
        image::RgbImage::from_fn(w, h, |x, _| image::Rgb([shade, shade / 2, x as u8]))
            .write_to(&mut out, image::ImageFormat::Png)
            .unwrap();
    } else {
        image::GrayImage::from_fn(w, h, |_, _| image::Luma([shade]))
            .write_to(&mut out, image::ImageFormat::Png)
            .unwrap();
    }
    out.into_inner()
}

/// A parquet file in the schema the `datasets` library writes for image
/// classification: `image` (or `img`) struct<bytes, path>, int64 `label`
/// column(s), optional boolean attribute columns, ClassLabel names in the
/// `huggingface` metadata.
pub fn parquet_file(
    image_col: &str,
    label_col: &str,
    images: &[Vec<u8>],
    labels: &[i64],
    class_names: &[&str],
    bools: &[(&str, Vec<bool>)],
) -> Vec<u8> {
    let mut msg = format!(
        "message schema {{ optional group {image_col} {{ optional binary bytes; optional binary path (STRING); }} optional int64 {label_col};"
    );
    for (name, _) in bools {
        msg.push_str(&format!(" optional boolean {name};"));
    }
    msg.push_str(" }");
    let schema = Arc::new(parse_message_type(&msg).unwrap());
    let meta = serde_json::json!({"info": {"features": {
        image_col: {"_type": "Image"},
        label_col: {"_type": "ClassLabel", "names": class_names},
    }}});
    let props = Arc::new(
        WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_key_value_metadata(Some(vec![KeyValue::new(
                "huggingface".to_string(),
                meta.to_string(),
            )]))
            .build(),
    );
    let mut buf = Vec::new();
    let mut w = SerializedFileWriter::new(&mut buf, schema, props).unwrap();
    let mut rg = w.next_row_group().unwrap();
    let n = images.len();
    let mut col_idx = 0;
    while let Some(mut col) = rg.next_column().unwrap() {
        match col_idx {
            0 => {
                let v: Vec<ByteArray> = images.iter().map(|b| ByteArray::from(b.clone())).collect();
                col.typed::<ByteArrayType>()
                    .write_batch(&v, Some(&vec![2; n]), None)
                    .unwrap();
            }
            1 => {
                let v: Vec<ByteArray> = (0..n)
                    .map(|i| ByteArray::from(format!("{i}.png").as_str()))
                    .collect();
                col.typed::<ByteArrayType>()
                    .write_batch(&v, Some(&vec![2; n]), None)
                    .unwrap();
            }
            2 => {
                col.typed::<Int64Type>()
                    .write_batch(labels, Some(&vec![1; n]), None)
                    .unwrap();
            }
            k => {
                col.typed::<BoolType>()
                    .write_batch(&bools[k - 3].1, Some(&vec![1; n]), None)
                    .unwrap();
            }
        }
        col.close().unwrap();
        col_idx += 1;
    }
    rg.close().unwrap();
    w.close().unwrap();
    buf
}

/// An MNIST-like split: gray 28x28 digits, shade 10 * label.
pub fn mnist_split(n: usize) -> (Vec<Vec<u8>>, Vec<i64>) {
    let labels: Vec<i64> = (0..n as i64).map(|i| i % 10).collect();
    let images = labels
        .iter()
        .map(|&y| png(28, 28, 10 * y as u8 + 5, false))
        .collect();
    (images, labels)
}

pub const DIGITS: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
