//! `/users`: dashboard accounts: create, change role or password, delete (admins); everyone sees
//! who has access.

use askama::Template;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

use super::{ago, seg, Layout};
use crate::api::ApiError;
use crate::store::User;
use crate::web::form::FormState;
use crate::web::session::Viewer;
use crate::web::Web;

/// A user row.
pub struct Row {
    name: String,
    role: String,
    totp: bool,
    last_login: String,
    locked: bool,
    api: String,
    form: String,
    me: bool,
}

#[derive(Template)]
#[template(path = "users.html")]
struct Page {
    layout: Layout,
    forms: FormState,
    users: Vec<Row>,
}

/// Renders the page with `forms`.
pub async fn render(
    web: &Web,
    viewer: &Viewer,
    forms: FormState,
    status: StatusCode,
) -> Result<Response, ApiError> {
    let users: Vec<User> = web.get(&viewer.principal, "/users").await?;
    let rows = users
        .iter()
        .map(|u| Row {
            name: u.name.clone(),
            role: u.role.to_string(),
            totp: u.totp_enabled,
            last_login: ago(u.last_login_at),
            locked: u.locked_until.is_some(),
            api: format!("/users/{}", seg(&u.name)),
            form: format!("user-{}", u.name),
            me: u.id == viewer.user.id,
        })
        .collect();
    let layout = Layout::new(viewer, "Users", "users");
    let page = Page {
        layout: layout.clone(),
        forms,
        users: rows,
    };
    Ok(super::render(web, status, &layout, &page))
}

/// `GET /users`.
pub async fn list(State(web): State<Web>, headers: HeaderMap) -> Response {
    super::show(&web, &headers, async |viewer| {
        render(&web, viewer, FormState::default(), StatusCode::OK).await
    })
    .await
}
