//! The HTTP/1.1 server: a dedicated thread with its own current-thread tokio runtime.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::thread::JoinHandle;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use jiff::Timestamp;
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use super::sts::{self, RequestParts, StsError};
use super::{FaultKind, Outcome, Shared, ids};

const MAX_BODY: usize = 1 << 20;

pub(crate) fn spawn(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    shutdown: oneshot::Receiver<()>,
) -> anyhow::Result<JoinHandle<()>> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<std::io::Result<()>>();
    let thread = std::thread::Builder::new()
        .name("sts-test-double".to_owned())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                let mut shutdown = shutdown;
                loop {
                    tokio::select! {
                        _ = &mut shutdown => break,
                        accepted = listener.accept() => match accepted {
                            Ok((stream, _)) => {
                                tokio::spawn(serve(stream, shared.clone()));
                            }
                            // e.g. EMFILE: back off instead of spinning.
                            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
                        },
                    }
                }
            });
            // Dropping the runtime cancels the connection tasks and closes their sockets.
            drop(runtime);
        })?;
    ready_rx
        .recv()
        .map_err(|_| anyhow::anyhow!("STS test double thread died during start"))??;
    Ok(thread)
}

async fn serve(stream: TcpStream, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let fd = stream.as_raw_fd();
    let service = hyper::service::service_fn(move |req| handle(shared.clone(), fd, req));
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// Makes the coming close of `fd` send RST instead of FIN.
fn arm_reset(fd: RawFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: `fd` is the socket of the connection whose request is being served, so it is open;
    // setsockopt only reads `linger`.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

async fn handle(
    shared: Arc<Shared>,
    fd: RawFd,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let arrived = Timestamp::now();
    let started = std::time::Instant::now();
    let request_id = ids::request_id();
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            let err = StsError {
                status: 400,
                code: "ValidationError",
                message: "Request body could not be read or is too large".to_owned(),
            };
            return Ok(response(&err.to_xml(&request_id), err.status, &request_id));
        }
    };
    let params = sts::parse_params(parts.uri.query(), &body);
    let mut call = sts::new_call(&parts.headers, &params, &request_id, arrived);

    // An armed hold: wait here, in flight, until the test lets the request go on.
    let gate = shared.lock().faults.take_hold(&call);
    if let Some(gate) = gate {
        gate.park(&call).await;
    }

    let (fault, delay) = shared.lock().faults.draw();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let result = match fault {
        Some(FaultKind::ConnectionReset) => {
            call.injected = true;
            call.outcome = Outcome::ConnectionReset;
            call.handled_in = started.elapsed();
            shared.lock().calls.push(call);
            arm_reset(fd);
            // A service error makes hyper drop the connection without a response.
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "injected reset",
            ));
        }
        Some(kind) => {
            call.injected = true;
            Err(StsError::injected(kind))
        }
        None => {
            let request = RequestParts {
                method: parts.method.as_str(),
                path: parts.uri.path(),
                query: parts.uri.query(),
                headers: &parts.headers,
                body: &body,
            };
            shared
                .lock()
                .process(&request, &params, &mut call, Timestamp::now())
        }
    };
    let (status, xml) = match result {
        Ok(xml) => (200, xml),
        Err(err) => {
            call.outcome = Outcome::Error {
                code: err.code.to_owned(),
                status: err.status,
            };
            (err.status, err.to_xml(&request_id))
        }
    };
    let response = response(&xml, status, &request_id);
    call.handled_in = started.elapsed();
    shared.lock().calls.push(call);
    Ok(response)
}

fn response(xml: &str, status: u16, request_id: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(xml.to_owned())));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    headers.insert("content-type", "text/xml".parse().expect("valid header"));
    if let Ok(id) = request_id.parse() {
        headers.insert("x-amzn-requestid", id);
    }
    response
}
