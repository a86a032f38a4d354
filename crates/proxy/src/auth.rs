//! Client authentication: the proxy plays PostgreSQL's part of the exchange
//! and, on success, knows how to log in to servers as that user.
//!
//! A user that does not exist fails exactly like a wrong password (same
//! message, same SQLSTATE 28P01, same exchange), so a client cannot probe for
//! user names. With a SCRAM verifier the proxy never learns the password; the
//! ClientKey recovered from the exchange is what logs in to the servers
//! (PgBouncer's SCRAM pass-through), so the verifier must be the one in
//! `pg_authid`.

use bytes::BytesMut;
use pgwarden_pgauth::{verify_md5_response, ScramServer, Secret, SCRAM_SHA_256};
use pgwarden_wire::backend::{Authentication, BackendMessage};
use pgwarden_wire::frontend::{password_text, sasl_initial_response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::AuthType;
use crate::server::ServerCredential;
use crate::session::{read_client_frame, SessionEnd};
use crate::stream::Stream;

/// Largest password message accepted during authentication.
const MAX_AUTH_MESSAGE: usize = 8192;

/// Runs the exchange for `user` whose stored secret is `secret` (`None`:
/// unknown user). On success, what the proxy can use towards servers.
pub async fn authenticate(
    stream: &mut Stream,
    buf: &mut BytesMut,
    auth_type: AuthType,
    user: &str,
    secret: Option<Secret>,
    cached_verifier: impl FnOnce(&str) -> Option<pgwarden_pgauth::ScramVerifier>,
) -> Result<ServerCredential, SessionEnd> {
    let known = || match &secret {
        Some(s) => ServerCredential::Secret(s.clone()),
        None => ServerCredential::None,
    };
    let method = match (auth_type, &secret) {
        (AuthType::Trust, _) => return Ok(known()),
        // PostgreSQL does SCRAM when the stored secret is a SCRAM verifier,
        // even where md5 is configured.
        (AuthType::Md5, Some(Secret::Scram(_))) => AuthType::ScramSha256,
        (m, _) => m,
    };
    if method == AuthType::Md5 {
        let salt: [u8; 4] = rand::random();
        send(
            stream,
            &BackendMessage::Authentication(Authentication::Md5Password { salt }),
        )
        .await?;
        let body = expect_password(stream, buf).await?;
        let response = password_text(&body).map_err(SessionEnd::protocol)?;
        let ok = secret
            .as_ref()
            .is_some_and(|s| verify_md5_response(s, user, salt, response));
        return if ok {
            Ok(known())
        } else {
            Err(SessionEnd::auth_failed(user))
        };
    }

    let mut server = match &secret {
        Some(Secret::Plain(p)) => match cached_verifier(p) {
            Some(v) => ScramServer::new(v),
            None => ScramServer::for_secret(&Secret::Plain(p.clone()))
                .expect("a plain password can do SCRAM"),
        },
        Some(s @ Secret::Scram(_)) => ScramServer::for_secret(s).expect("a verifier can do SCRAM"),
        // An md5 hash cannot do SCRAM; the exchange runs and fails like a wrong password.
        Some(Secret::Md5(_)) | None => ScramServer::for_unknown_user(user),
    };
    let usable = matches!(&secret, Some(Secret::Plain(_)) | Some(Secret::Scram(_)));
    send(
        stream,
        &BackendMessage::Authentication(Authentication::Sasl {
            mechanisms: vec![SCRAM_SHA_256.to_string()],
        }),
    )
    .await?;
    let body = expect_password(stream, buf).await?;
    let (mechanism, first) = sasl_initial_response(&body).map_err(SessionEnd::protocol)?;
    if mechanism != SCRAM_SHA_256 {
        return Err(SessionEnd::Fatal {
            code: "28000",
            message: format!(
                "client selected an invalid SASL authentication mechanism {mechanism:?}"
            ),
        });
    }
    let server_first = server
        .handle_client_first(first)
        .map_err(|e| SessionEnd::Fatal {
            code: "08P01",
            message: e.to_string(),
        })?;
    send(
        stream,
        &BackendMessage::Authentication(Authentication::SaslContinue { data: server_first }),
    )
    .await?;
    let body = expect_password(stream, buf).await?;
    let server_final = match server.handle_client_final(&body) {
        Ok(f) if usable => f,
        Ok(_) | Err(pgwarden_pgauth::AuthError::WrongProof) => {
            return Err(SessionEnd::auth_failed(user))
        }
        Err(e) => {
            return Err(SessionEnd::Fatal {
                code: "08P01",
                message: e.to_string(),
            })
        }
    };
    send(
        stream,
        &BackendMessage::Authentication(Authentication::SaslFinal { data: server_final }),
    )
    .await?;
    Ok(match (&secret, server.client_key()) {
        (Some(Secret::Scram(v)), Some(client_key)) => ServerCredential::ScramKeys {
            client_key,
            server_key: v.server_key,
        },
        _ => known(),
    })
}

async fn send(stream: &mut Stream, msg: &BackendMessage) -> Result<(), SessionEnd> {
    let mut out = BytesMut::new();
    msg.encode(&mut out);
    stream.write_all(&out).await.map_err(|_| SessionEnd::Gone)
}

async fn expect_password(stream: &mut Stream, buf: &mut BytesMut) -> Result<BytesMut, SessionEnd> {
    // Judge the type byte before waiting for a length's worth of bytes: a
    // second StartupMessage (which has no type byte) is refused at once.
    while buf.is_empty() {
        buf.reserve(256);
        if stream.read_buf(buf).await.map_err(|_| SessionEnd::Gone)? == 0 {
            return Err(SessionEnd::Gone);
        }
    }
    if buf[0] != b'p' {
        return Err(SessionEnd::Fatal {
            code: "08P01",
            message: format!(
                "expected a password response during authentication, got message type {:?}",
                char::from(buf[0])
            ),
        });
    }
    let (_, body) = read_client_frame(stream, buf, MAX_AUTH_MESSAGE).await?;
    Ok(body)
}
