//! `/account`: the logged-in user's own password and TOTP second factor (enrol with a QR code,
//! confirm with a code, see the recovery codes once; turn off).

use askama::Template;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use axum::Form;
use serde_json::json;

use super::Layout;
use crate::account::TotpEnrolment;
use crate::api::{ApiError, MeView, RecoveryCodes};
use crate::web::form::FormState;
use crate::web::session::Viewer;
use crate::web::Web;

/// What the page shows besides the forms.
pub enum Extra {
    /// Nothing.
    None,
    /// Recovery codes just issued.
    Codes(Vec<String>),
}

#[derive(Template)]
#[template(path = "account.html")]
struct Page {
    layout: Layout,
    forms: FormState,
    name: String,
    role: String,
    totp: bool,
    codes_left: u32,
    enrolment: Option<TotpEnrolment>,
    codes: Vec<String>,
}

/// Renders the page with `forms`.
pub async fn render(
    web: &Web,
    viewer: &Viewer,
    forms: FormState,
    extra: Extra,
    status: StatusCode,
) -> Result<Response, ApiError> {
    let p = &viewer.principal;
    let me: MeView = web.get(p, "/me").await?;
    let user = me.user.unwrap_or_else(|| viewer.user.clone());
    let enrolment = if user.totp_enabled {
        None
    } else {
        match web.get::<TotpEnrolment>(p, "/me/totp").await {
            Ok(enrolment) => Some(enrolment),
            Err(error) if error.status == StatusCode::NOT_FOUND => None,
            Err(error) => return Err(error),
        }
    };
    let layout = Layout::new(viewer, "Account", "account");
    let page = Page {
        layout: layout.clone(),
        forms,
        name: user.name.clone(),
        role: user.role.to_string(),
        totp: user.totp_enabled,
        codes_left: user.recovery_codes_left,
        enrolment,
        codes: match extra {
            Extra::Codes(codes) => codes,
            Extra::None => Vec::new(),
        },
    };
    Ok(super::render(web, status, &layout, &page))
}

/// `GET /account`.
pub async fn page(State(web): State<Web>, headers: HeaderMap) -> Response {
    super::show(&web, &headers, async |viewer| {
        render(
            &web,
            viewer,
            FormState::default(),
            Extra::None,
            StatusCode::OK,
        )
        .await
    })
    .await
}

fn field(fields: &[(String, String)], name: &str) -> String {
    fields
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

/// `POST /account/totp`: starts enrolment (through `POST /api/v1/me/totp`).
pub async fn begin_totp(
    State(web): State<Web>,
    headers: HeaderMap,
    Form(fields): Form<Vec<(String, String)>>,
) -> Response {
    super::submit(&web, &headers, &fields, async |viewer| {
        let result: Result<TotpEnrolment, ApiError> = web
            .call(&viewer.principal, Method::POST, "/me/totp", None)
            .await;
        let (forms, status) = match result {
            Ok(_) => (FormState::default(), StatusCode::OK),
            Err(error) => (FormState::refused("totp-begin", &error), error.status),
        };
        render(&web, viewer, forms, Extra::None, status).await
    })
    .await
}

/// `POST /account/totp/confirm`: confirms enrolment and shows the recovery codes once.
pub async fn confirm_totp(
    State(web): State<Web>,
    headers: HeaderMap,
    Form(fields): Form<Vec<(String, String)>>,
) -> Response {
    super::submit(&web, &headers, &fields, async |viewer| {
        let body = json!({"code": field(&fields, "code")});
        let result: Result<RecoveryCodes, ApiError> = web
            .call(
                &viewer.principal,
                Method::POST,
                "/me/totp/confirm",
                Some(&body),
            )
            .await;
        match result {
            Ok(codes) => {
                let codes = Extra::Codes(codes.recovery_codes);
                render(&web, viewer, FormState::default(), codes, StatusCode::OK).await
            }
            Err(error) => {
                let forms = FormState::refused("totp-confirm", &error);
                render(&web, viewer, forms, Extra::None, error.status).await
            }
        }
    })
    .await
}
