//! The emulated Ameyo: users, sessions and what each API call does to them.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::{Map, Value, json};

use crate::routes::{AmeyoError, LoginCall, RequestBody, Route};
use crate::{EmulatorOptions, Faults, RecordedRequest};

/// The vendor's sample answer shows this as the first `ccUserId`.
const FIRST_CC_USER_ID: i64 = 364;
/// The vendor's sample answer shows this `privilegePlanId`.
const PRIVILEGE_PLAN_ID: i64 = 13;

/// The `userType` values Ameyo is known to accept.
const USER_TYPES: [&str; 6] = [
    "Agent",
    "Supervisor",
    "Executive",
    "Professional Agent",
    "Analyst",
    "Administrator",
];

pub(crate) struct Session {
    user_id: String,
    expires_at: Option<Instant>,
}

pub(crate) struct StoredUser {
    cc_user_id: i64,
    /// The object the create and list calls answer with.
    record: Map<String, Value>,
    /// The password, never part of `record`.
    pub(crate) user_data: Option<String>,
}

pub(crate) struct EmulatorState {
    login_user: Option<String>,
    login_password: Option<String>,
    session_ttl: Option<Duration>,
    pub(crate) faults: Faults,
    /// Keyed by userId.
    pub(crate) users: HashMap<String, StoredUser>,
    next_cc_user_id: i64,
    /// Keyed by session id.
    pub(crate) sessions: HashMap<String, Session>,
    pub(crate) logins: u64,
    pub(crate) terminations: HashMap<String, u64>,
    pub(crate) requests: VecDeque<RecordedRequest>,
    /// API calls received since start (`requests` keeps only the last ones).
    pub(crate) requests_received: u64,
    /// API calls that reached the rate limiter since the faults were last set.
    pub(crate) rate_limit_calls: u64,
}

/// JSON types the documented fields have.
#[derive(Clone, Copy)]
enum JsonKind {
    String,
    Boolean,
    Integer,
}

impl JsonKind {
    fn matches(self, value: &Value) -> bool {
        match self {
            JsonKind::String => value.is_string(),
            JsonKind::Boolean => value.is_boolean(),
            JsonKind::Integer => value.is_i64(),
        }
    }

    fn name(self) -> &'static str {
        match self {
            JsonKind::String => "string",
            JsonKind::Boolean => "boolean",
            JsonKind::Integer => "integer",
        }
    }
}

/// The fields a create or update may set (besides `userId`), with their documented
/// types. The two vendor pages disagree on `maxAllowedLogins`: a string on create,
/// an integer on update; the emulator holds clients to each page.
fn user_fields(update: bool) -> [(&'static str, JsonKind); 10] {
    let max_allowed_logins = if update {
        JsonKind::Integer
    } else {
        JsonKind::String
    };
    [
        ("userType", JsonKind::String),
        ("userName", JsonKind::String),
        ("systemUserType", JsonKind::String),
        ("defaultReady", JsonKind::Boolean),
        ("userData", JsonKind::String),
        ("contactCenterId", JsonKind::Integer),
        ("loginPolicy", JsonKind::String),
        ("maxAllowedLogins", max_allowed_logins),
        ("mappingUserId", JsonKind::String),
        ("description", JsonKind::String),
    ]
}

/// A field's value when present and not null; 400 when it has the wrong type.
fn optional_field<'a>(
    body: &'a Map<String, Value>,
    field: &str,
    kind: JsonKind,
) -> Result<Option<&'a Value>, AmeyoError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(value) if kind.matches(value) => Ok(Some(value)),
        Some(_) => Err(AmeyoError::invalid_input(format!(
            "parameter expected in input: {field} as {}",
            kind.name()
        ))),
    }
}

fn required_field<'a>(
    body: &'a Map<String, Value>,
    field: &str,
    kind: JsonKind,
) -> Result<&'a Value, AmeyoError> {
    optional_field(body, field, kind)?
        .ok_or_else(|| AmeyoError::invalid_input(format!("parameter expected in input: {field}")))
}

/// A required, non-empty string such as `userId`.
fn required_text<'a>(body: &'a Map<String, Value>, field: &str) -> Result<&'a str, AmeyoError> {
    match required_field(body, field, JsonKind::String)?.as_str() {
        Some(text) if !text.is_empty() => Ok(text),
        _ => Err(AmeyoError::invalid_input(format!(
            "parameter expected in input: {field}"
        ))),
    }
}

fn check_field_types(body: &Map<String, Value>, update: bool) -> Result<(), AmeyoError> {
    for (field, kind) in user_fields(update) {
        optional_field(body, field, kind)?;
    }
    Ok(())
}

/// Whether two values of a field mean the same; `maxAllowedLogins` is a string on
/// create and an integer on update, so `"2"` and `2` are the same there.
fn same_value(field: &str, old: &Value, new: &Value) -> bool {
    if field == "maxAllowedLogins" {
        let as_number = |value: &Value| match value {
            Value::String(text) => text.trim().parse::<i64>().ok(),
            other => other.as_i64(),
        };
        if let (Some(a), Some(b)) = (as_number(old), as_number(new)) {
            return a == b;
        }
    }
    old == new
}

/// The list object of a user with every documented key, in the vendor's order.
fn user_template(cc_user_id: i64, user_id: &str) -> Map<String, Value> {
    let mut record = Map::new();
    record.insert("ccUserId".into(), json!(cc_user_id));
    record.insert("userId".into(), json!(user_id));
    record.insert("userType".into(), Value::Null);
    record.insert("skillLevelIds".into(), json!([]));
    record.insert("skillIds".into(), Value::Null);
    record.insert("userName".into(), Value::Null);
    record.insert("systemUserType".into(), Value::Null);
    record.insert("privilegePlanId".into(), json!(PRIVILEGE_PLAN_ID));
    record.insert("defaultReady".into(), Value::Null);
    record.insert("maskedPrivileges".into(), Value::Null);
    record.insert("maxAllowedLogins".into(), Value::Null);
    record.insert("loginPolicy".into(), Value::Null);
    record.insert("mappingUserId".into(), Value::Null);
    record.insert("contactCenterId".into(), Value::Null);
    record.insert("description".into(), Value::Null);
    record
}

/// `d898-<hex8>-ses-<userId>-<40 random letters and digits>`; characters a header
/// cannot carry are replaced in the userId part.
fn new_session_id(user_id: &str) -> String {
    let mut rng = rand::rng();
    let shard: u32 = rng.random();
    let tail: String = (&mut rng)
        .sample_iter(rand::distr::Alphanumeric)
        .take(40)
        .map(char::from)
        .collect();
    let user: String = user_id
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .collect();
    format!("d898-{shard:08x}-ses-{user}-{tail}")
}

impl EmulatorState {
    pub(crate) fn new(options: EmulatorOptions) -> Self {
        EmulatorState {
            login_user: options.login_user,
            login_password: options.login_password,
            session_ttl: options.session_ttl,
            faults: options.faults,
            users: HashMap::new(),
            next_cc_user_id: FIRST_CC_USER_ID,
            sessions: HashMap::new(),
            logins: 0,
            terminations: HashMap::new(),
            requests: VecDeque::new(),
            requests_received: 0,
            rate_limit_calls: 0,
        }
    }

    /// Whether `session_id` names a live session; forgets it when it has expired.
    pub(crate) fn session_live(&mut self, session_id: &str) -> bool {
        let expired = match self.sessions.get(session_id) {
            None => return false,
            Some(session) => session
                .expires_at
                .is_some_and(|deadline| Instant::now() >= deadline),
        };
        if expired {
            self.sessions.remove(session_id);
        }
        !expired
    }

    fn forget_expired_sessions(&mut self) {
        let now = Instant::now();
        self.sessions
            .retain(|_, session| session.expires_at.is_none_or(|deadline| now < deadline));
    }

    fn end_sessions_of(&mut self, user_id: &str) {
        self.sessions
            .retain(|_, session| session.user_id != user_id);
    }

    pub(crate) fn sorted_users(&self, contact_center_id: Option<i64>) -> Vec<Value> {
        let mut users: Vec<&StoredUser> = self
            .users
            .values()
            .filter(|user| {
                contact_center_id.is_none_or(|cc| {
                    user.record.get("contactCenterId").and_then(Value::as_i64) == Some(cc)
                })
            })
            .collect();
        users.sort_by_key(|user| user.cc_user_id);
        users
            .into_iter()
            .map(|user| Value::Object(user.record.clone()))
            .collect()
    }

    fn take_cc_user_id(&mut self) -> i64 {
        let id = self.next_cc_user_id;
        self.next_cc_user_id += 1;
        id
    }

    pub(crate) fn handle(
        &mut self,
        route: Route,
        query: Option<&str>,
        session_id: Option<&str>,
        body: &RequestBody,
        faults: &Faults,
    ) -> (Result<Value, AmeyoError>, bool) {
        let session_valid = session_id.is_some_and(|id| self.session_live(id));
        let outcome = match route {
            // Logging in is the one call that needs no session.
            Route::Login(call) => self.login(call, body),
            _ if !session_valid => Err(AmeyoError::invalid_session()),
            Route::Logout => self.logout(body, session_id),
            Route::TerminateAllSessions => self.terminate_all_sessions(body),
            Route::KeepAlive => Ok(json!({"status": "success"})),
            Route::CreateUser => self.create_user(body, faults),
            Route::UpdateUserFromBody => body
                .object()
                .and_then(|map| required_text(map, "userId").map(str::to_owned))
                .and_then(|user_id| self.update_user(&user_id, body, faults)),
            Route::UpdateUser(id) => self.update_user(&id, body, faults),
            Route::ListUsers => self.list_users(query),
            Route::DeleteUser(user_id) => self.delete_user(&user_id),
        };
        (outcome, session_valid)
    }

    fn login(&mut self, call: LoginCall, body: &RequestBody) -> Result<Value, AmeyoError> {
        let body = body.object()?;
        let user_id = required_text(body, "userId")?;
        let token = required_field(body, "token", JsonKind::String)?
            .as_str()
            .unwrap_or_default();
        let wrong_user = self
            .login_user
            .as_deref()
            .is_some_and(|expected| expected != user_id);
        let wrong_token = self
            .login_password
            .as_deref()
            .is_some_and(|expected| expected != token);
        if wrong_user || wrong_token {
            return Err(AmeyoError::invalid_credentials());
        }
        let force = match body.get("forceLogin") {
            Some(Value::Bool(force)) => *force,
            Some(Value::String(force)) => force.eq_ignore_ascii_case("true"),
            _ => false,
        };
        self.forget_expired_sessions();
        if self.sessions.values().any(|s| s.user_id == user_id) {
            if !force {
                return Err(AmeyoError::command_failed("user.already.logged.in", 5120));
            }
            self.end_sessions_of(user_id);
        }
        let session_id = new_session_id(user_id);
        self.sessions.insert(
            session_id.clone(),
            Session {
                user_id: user_id.to_owned(),
                expires_at: self.session_ttl.map(|ttl| Instant::now() + ttl),
            },
        );
        self.logins += 1;
        Ok(match call {
            LoginCall::UserLogin => json!({
                "requestId": uuid::Uuid::new_v4().to_string(),
                "contactCenterId": 1,
                "userSessionInfo": {
                    "sessionId": session_id,
                    "userId": user_id,
                    "userType": "Administrator",
                },
            }),
            LoginCall::Session => json!({
                "userId": user_id,
                "terminalInfo": body.get("terminalInfo").cloned().unwrap_or(Value::Null),
                "sessionId": session_id,
            }),
        })
    }

    fn logout(
        &mut self,
        body: &RequestBody,
        header_session: Option<&str>,
    ) -> Result<Value, AmeyoError> {
        let named = match body {
            RequestBody::Empty => None,
            other => other
                .object()?
                .get("sessionId")
                .and_then(Value::as_str)
                .map(str::to_owned),
        };
        if let Some(session_id) = named.as_deref().or(header_session) {
            self.sessions.remove(session_id);
        }
        Ok(json!({"status": "success"}))
    }

    fn terminate_all_sessions(&mut self, body: &RequestBody) -> Result<Value, AmeyoError> {
        let user_id = required_text(body.object()?, "userId")?;
        self.end_sessions_of(user_id);
        *self.terminations.entry(user_id.to_owned()).or_default() += 1;
        Ok(json!({"status": "success"}))
    }

    fn create_user(&mut self, body: &RequestBody, faults: &Faults) -> Result<Value, AmeyoError> {
        let body = body.object()?;
        let user_id = required_text(body, "userId")?;
        if faults.reject_user_ids.iter().any(|id| id == user_id) {
            return Err(AmeyoError::invalid_input("invalid value in input: userId"));
        }
        let user_type = required_field(body, "userType", JsonKind::String)?;
        required_field(body, "userName", JsonKind::String)?;
        required_field(body, "contactCenterId", JsonKind::Integer)?;
        check_field_types(body, false)?;
        if !user_type
            .as_str()
            .is_some_and(|user_type| USER_TYPES.contains(&user_type))
        {
            return Err(AmeyoError::command_failed("invalid.user.type", 5121));
        }
        if self.users.contains_key(user_id) {
            return Err(AmeyoError::command_failed("user.already.exists", 5122));
        }
        let cc_user_id = self.take_cc_user_id();
        let mut record = user_template(cc_user_id, user_id);
        for (field, _) in user_fields(false) {
            if field != "userData"
                && let Some(value) = body.get(field)
            {
                record.insert(field.to_owned(), value.clone());
            }
        }
        let user_data = body
            .get("userData")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let answer = Value::Object(record.clone());
        self.users.insert(
            user_id.to_owned(),
            StoredUser {
                cc_user_id,
                record,
                user_data,
            },
        );
        Ok(answer)
    }

    /// `id` is the path's id: a numeric `ccUserId` when one matches, else a userId.
    fn update_user(
        &mut self,
        id: &str,
        body: &RequestBody,
        faults: &Faults,
    ) -> Result<Value, AmeyoError> {
        let body = body.object()?;
        let user_id = required_text(body, "userId")?;
        if faults
            .reject_user_ids
            .iter()
            .any(|rejected| rejected == user_id || rejected == id)
        {
            return Err(AmeyoError::invalid_input("invalid value in input: userId"));
        }
        check_field_types(body, true)?;
        let by_cc_user_id = id.parse::<i64>().ok().and_then(|cc_user_id| {
            self.users
                .iter()
                .find(|(_, user)| user.cc_user_id == cc_user_id)
                .map(|(key, _)| key.clone())
        });
        let key = by_cc_user_id
            .or_else(|| self.users.contains_key(id).then(|| id.to_owned()))
            .ok_or_else(AmeyoError::user_not_found)?;
        if key != user_id {
            return Err(AmeyoError::invalid_input(
                "invalid value in input: userId does not match the user in the path",
            ));
        }
        if let Some(user_type) = optional_field(body, "userType", JsonKind::String)?
            && !user_type
                .as_str()
                .is_some_and(|user_type| USER_TYPES.contains(&user_type))
        {
            return Err(AmeyoError::command_failed("invalid.user.type", 5121));
        }
        let user = self
            .users
            .get_mut(&key)
            .ok_or_else(AmeyoError::user_not_found)?;
        let mut updated_fields = Vec::new();
        for (field, _) in user_fields(true) {
            let Some(sent) = body.get(field).filter(|value| !value.is_null()) else {
                continue;
            };
            if field == "userData" {
                let password = sent.as_str().map(str::to_owned);
                if user.user_data != password {
                    user.user_data = password;
                    updated_fields.push(field);
                }
                continue;
            }
            // An empty mapping id is how a client clears the mapping.
            let new = if field == "mappingUserId" && sent.as_str() == Some("") {
                Value::Null
            } else {
                sent.clone()
            };
            let old = user.record.get(field).unwrap_or(&Value::Null);
            if !same_value(field, old, &new) {
                user.record.insert(field.to_owned(), new);
                updated_fields.push(field);
            }
        }
        Ok(json!({
            "status": "success",
            "message": "User updated successfully",
            "userId": user_id,
            "contactCenterId": user.record.get("contactCenterId").cloned().unwrap_or(Value::Null),
            "updatedFields": updated_fields,
        }))
    }

    fn list_users(&self, query: Option<&str>) -> Result<Value, AmeyoError> {
        let contact_center_id = query
            .and_then(|query| {
                form_urlencoded::parse(query.as_bytes())
                    .find(|(name, _)| name == "ccId")
                    .map(|(_, value)| value.into_owned())
            })
            .and_then(|value| value.trim().parse::<i64>().ok())
            .ok_or_else(|| AmeyoError::invalid_input("parameter expected in input: ccId"))?;
        Ok(Value::Array(self.sorted_users(Some(contact_center_id))))
    }

    fn delete_user(&mut self, user_id: &str) -> Result<Value, AmeyoError> {
        if self.users.remove(user_id).is_none() {
            return Err(AmeyoError::user_not_found());
        }
        // A deleted user can no longer be logged in.
        self.end_sessions_of(user_id);
        Ok(json!({
            "status": "success",
            "message": "User deleted successfully",
            "userId": user_id,
        }))
    }

    pub(crate) fn plant_user(&mut self, user: Value) -> Option<Value> {
        let Value::Object(mut fields) = user else {
            return None;
        };
        let user_id = fields
            .get("userId")
            .and_then(Value::as_str)
            .filter(|id| !id.is_empty())?
            .to_owned();
        let user_data = fields
            .remove("userData")
            .and_then(|value| value.as_str().map(str::to_owned));
        let existing = self.users.get(&user_id).map(|user| user.cc_user_id);
        let cc_user_id = match fields.get("ccUserId").and_then(Value::as_i64) {
            Some(given) => {
                self.next_cc_user_id = self.next_cc_user_id.max(given.saturating_add(1));
                given
            }
            None => match existing {
                Some(id) => id,
                None => self.take_cc_user_id(),
            },
        };
        let mut record = user_template(cc_user_id, &user_id);
        for (field, value) in fields {
            if field != "ccUserId" {
                record.insert(field, value);
            }
        }
        let answer = Value::Object(record.clone());
        self.users.insert(
            user_id,
            StoredUser {
                cc_user_id,
                record,
                user_data,
            },
        );
        Some(answer)
    }
}
