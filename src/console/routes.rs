//! The console's routes (a contract: scripts and tests use them). Each
//! parses its request, calls a `Reader` or `crate::ops` (the CLI's own
//! operator layer) and hands the data to a page, or to JSON.
//!
//! `GET /`, `/events?q=&group=&page=`, `/events/{key}`,
//! `/deliveries?state=&handler=&page=`; `POST /deliveries/retry`,
//! `/deliveries/discard`, `/events/{key}/replay`.

use std::collections::BTreeMap;
use std::io::Read;

use serde::Serialize;
use serde_json::Value;
use tiny_http::Method;

use super::http::{self, all, first};
use super::{ACTION_WAIT, Console, Reply, pages};
use crate::backend;
use crate::error::Error;
use crate::ops::{self, ReplayRequest};
use crate::store::admin::{self, DeliveryLine, DeliveryQuery, EventQuery, Orphaned, SeenEvent};
use crate::store::{DeliveryState, HistoryEntry, HistoryQuery};

/// Keys one action may name or select.
pub const MAX_KEYS: usize = 1000;

/// Rows per page unless `per_page` says fewer (at most `MAX_PER_PAGE`).
const PER_PAGE: usize = 50;
const MAX_PER_PAGE: usize = 200;

/// The deepest row a page may reach (a deeper page would read all the
/// rows before it).
const MAX_DEPTH: usize = 100_000;

/// The longest search text or group regex taken.
const MAX_QUERY: usize = 1000;

/// A request that cannot be answered with its page: status and why.
pub struct Fail {
    status: u16,
    message: String,
}

fn fail(status: u16, message: impl Into<String>) -> Fail {
    Fail {
        status,
        message: message.into(),
    }
}

impl From<Error> for Fail {
    fn from(e: Error) -> Fail {
        let status = match &e {
            Error::Busy { .. } => 409,
            Error::Usage(_) | Error::Config(_) => 400,
            _ => 500,
        };
        let mut message = e.to_string();
        if status == 409 {
            message.push_str(
                " (a spark run or watch holds this SQLite database; try again when it ends)",
            );
        }
        fail(status, message)
    }
}

/// Who is asking, and how they want the answer.
pub struct Ctx<'a> {
    pub console: &'a Console<'a>,
    pub user: String,
    pub json: bool,
}

impl Ctx<'_> {
    /// The token forms carry (none when read-only: there are no forms).
    pub fn token(&self) -> Option<String> {
        (!self.console.read_only).then(|| self.console.gate.csrf_token(&self.user))
    }

    /// Who acted, for the history.
    fn who(&self) -> String {
        format!("{} (console)", self.user)
    }
}

/// Answers a request.
pub fn route(console: &Console<'_>, request: &mut tiny_http::Request) -> Reply {
    let json = http::wants_json(request);
    let Some(user) = console
        .gate
        .user(http::header(request, "Authorization").as_deref())
    else {
        let mut reply = error_reply(json, &fail(401, "the console needs a user and password"));
        if let Ok(h) = tiny_http::Header::from_bytes(
            &b"WWW-Authenticate"[..],
            &b"Basic realm=\"spark\", charset=\"UTF-8\""[..],
        ) {
            reply.headers.push(h);
        }
        return reply;
    };
    if console.gate.is_open()
        && !http::loopback_host(&http::header(request, "Host").unwrap_or_default())
    {
        return error_reply(
            json,
            &fail(
                403,
                "refused: a console without a password answers only to localhost addresses",
            ),
        );
    }
    let ctx = Ctx {
        console,
        user,
        json,
    };
    let url = request.url().to_owned();
    let (path, query) = url.split_once('?').unwrap_or((&url, ""));
    let query = http::pairs(query);
    let method = request.method().clone();
    let result = match (&method, path) {
        (Method::Get | Method::Head, _) => get(&ctx, path, &query),
        (Method::Post, _) => post(&ctx, request, path, &query),
        _ => Err(fail(405, format!("{method} is not served here"))),
    };
    match result {
        Ok(reply) => reply,
        Err(f) => error_reply(json, &f),
    }
}

fn get(ctx: &Ctx<'_>, path: &str, query: &[(String, String)]) -> Result<Reply, Fail> {
    match path {
        "/" => overview(ctx),
        "/static/spark.css" => Ok(Reply {
            status: 200,
            content_type: "text/css; charset=utf-8",
            body: pages::CSS.to_owned(),
            headers: Vec::new(),
        }),
        "/events/" if first(query, "key").is_some() => {
            event(ctx, first(query, "key").unwrap_or_default())
        }
        "/events" | "/events/" => events(ctx, query),
        "/deliveries" => deliveries(ctx, query),
        "/deliveries/retry" | "/deliveries/discard" => {
            Err(fail(405, "this address takes a POST (a form's button)"))
        }
        _ => match path.strip_prefix("/events/") {
            Some(rest) if rest.ends_with("/replay") => {
                Err(fail(405, "this address takes a POST (a form's button)"))
            }
            Some(segment) if !segment.contains('/') => {
                let key = http::decode_segment(segment)
                    .ok_or_else(|| fail(400, "the key in the address is not UTF-8"))?;
                event(ctx, &key)
            }
            _ => Err(fail(404, "no such page")),
        },
    }
}

fn post(
    ctx: &Ctx<'_>,
    request: &mut tiny_http::Request,
    path: &str,
    query: &[(String, String)],
) -> Result<Reply, Fail> {
    let known = matches!(path, "/deliveries/retry" | "/deliveries/discard")
        || (path.starts_with("/events/") && path.ends_with("/replay"));
    if !known {
        return Err(fail(
            if get_only(path) { 405 } else { 404 },
            "no action here",
        ));
    }
    if ctx.console.read_only {
        return Err(fail(403, "the console is read-only (--read-only)"));
    }
    if let Some(why) = http::cross_site(request) {
        return Err(fail(403, format!("refused: {why}")));
    }
    if request
        .body_length()
        .is_some_and(|n| n as u64 > http::MAX_BODY)
    {
        return Err(fail(413, "the form is too large"));
    }
    let mut body = String::new();
    request
        .as_reader()
        .take(http::MAX_BODY + 1)
        .read_to_string(&mut body)
        .map_err(|_| fail(400, "the form is not UTF-8 text"))?;
    if body.len() as u64 > http::MAX_BODY {
        return Err(fail(413, "the form is too large"));
    }
    let form = http::pairs(&body);
    let token = first(&form, "csrf").unwrap_or_default();
    if !ctx.console.gate.csrf_ok(&ctx.user, token) {
        return Err(fail(
            403,
            "refused: the form's token is missing or wrong (reload the page and try again)",
        ));
    }
    let done = match path {
        "/deliveries/retry" => retry(ctx, &form)?,
        "/deliveries/discard" => discard(ctx, &form)?,
        _ => {
            let segment = path
                .strip_prefix("/events/")
                .and_then(|p| p.strip_suffix("/replay"))
                .unwrap_or_default();
            let key = if segment.is_empty() {
                // `.`, `..` and the empty key: by field (see `event_url`).
                first(&form, "key")
                    .or_else(|| first(query, "key"))
                    .unwrap_or_default()
                    .to_owned()
            } else if segment.contains('/') {
                return Err(fail(404, "no such page"));
            } else {
                http::decode_segment(segment)
                    .ok_or_else(|| fail(400, "the key in the address is not UTF-8"))?
            };
            replay(ctx, &key, &form)?
        }
    };
    Ok(page(ctx, 200, done.title(), &done, |token| {
        pages::action_done(&done, token)
    }))
}

fn get_only(path: &str) -> bool {
    matches!(path, "/" | "/events" | "/events/" | "/deliveries") || path.starts_with("/events/")
}

/// The page of `data` (HTML), or `data` itself (JSON), with the form token.
fn page<T: Serialize>(
    ctx: &Ctx<'_>,
    status: u16,
    title: &str,
    data: &T,
    html: impl FnOnce(Option<&str>) -> maud::Markup,
) -> Reply {
    let token = ctx.token();
    if ctx.json {
        let mut value = serde_json::to_value(data).unwrap_or(Value::Null);
        redact_strings(&mut value);
        if let (Value::Object(map), Some(token)) = (&mut value, &token) {
            map.insert("csrf_token".into(), Value::String(token.clone()));
        }
        return Reply {
            status,
            content_type: "application/json",
            body: value.to_string(),
            headers: Vec::new(),
        };
    }
    let body = html(token.as_deref());
    Reply {
        status,
        content_type: "text/html; charset=utf-8",
        body: pages::layout(title, &ctx.user, ctx.console.read_only, body),
        headers: Vec::new(),
    }
}

/// Masks every secret in the strings of `value`.
fn redact_strings(value: &mut Value) {
    match value {
        Value::String(s) => {
            if let std::borrow::Cow::Owned(masked) = crate::redact::redact(s) {
                *s = masked;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact_strings),
        Value::Object(map) => map.values_mut().for_each(redact_strings),
        _ => {}
    }
}

fn error_reply(json: bool, f: &Fail) -> Reply {
    let message = crate::redact::redact(&f.message).into_owned();
    if json {
        return Reply {
            status: f.status,
            content_type: "application/json",
            body: serde_json::json!({"error": message, "status": f.status}).to_string(),
            headers: Vec::new(),
        };
    }
    Reply {
        status: f.status,
        content_type: "text/html; charset=utf-8",
        body: pages::error_page(f.status, &message),
        headers: Vec::new(),
    }
}

/// The page number and size a listing asks for.
fn paging(query: &[(String, String)]) -> Result<(usize, usize), Fail> {
    let number = |name: &str, default: usize, max: usize| -> Result<usize, Fail> {
        match first(query, name) {
            None => Ok(default),
            Some(text) => match text.parse::<usize>() {
                Ok(n) if (1..=max).contains(&n) => Ok(n),
                _ => Err(fail(
                    400,
                    format!("{name}: {text:?} is not a number from 1 to {max}"),
                )),
            },
        }
    };
    let (page, per_page) = (
        number("page", 1, 1_000_000)?,
        number("per_page", PER_PAGE, MAX_PER_PAGE)?,
    );
    if page.saturating_mul(per_page) > MAX_DEPTH {
        return Err(fail(
            400,
            format!("page {page}: pages go {MAX_DEPTH} rows deep; narrow the search instead"),
        ));
    }
    Ok((page, per_page))
}

/// `GET /`.
#[derive(Serialize)]
pub struct Overview {
    pub events_seen: u64,
    /// Events owed, by state (pending, in_flight, failed, dead).
    pub owed: BTreeMap<String, u64>,
    /// Events owed, by handler then state.
    pub by_handler: Vec<HandlerCount>,
    pub orphaned: Vec<Orphaned>,
    /// The newest delivery attempt in the history.
    pub last_attempt: Option<HistoryEntry>,
    /// Attempts per hour over the last 24 hours (UTC), oldest first.
    pub per_hour: Vec<HourCount>,
}

#[derive(Serialize)]
pub struct HandlerCount {
    pub handler: String,
    pub state: String,
    pub events: u64,
    pub in_config: bool,
}

#[derive(Serialize, Default, Clone)]
pub struct HourCount {
    /// `YYYY-MM-DD HH` (UTC).
    pub hour: String,
    pub delivered: u64,
    pub failed: u64,
}

fn overview(ctx: &Ctx<'_>) -> Result<Reply, Fail> {
    let config = ctx.console.config;
    let mut reader = backend::reader(config)?;
    let events_seen = reader.count_events()?;
    let deliveries = reader.deliveries()?;
    let known = config.handler_names();
    let mut owed = BTreeMap::new();
    let by_handler: Vec<HandlerCount> = admin::outstanding(&deliveries)
        .into_iter()
        .map(|(handler, state, events)| {
            *owed.entry(state.clone()).or_insert(0) += events;
            HandlerCount {
                in_config: known.contains(&handler.as_str()),
                handler,
                state,
                events,
            }
        })
        .collect();
    let orphaned = admin::orphaned(&deliveries, &known);
    let last_attempt = reader
        .history(&HistoryQuery {
            outcomes: ["delivered", "failed", "dead"].map(str::to_owned).to_vec(),
            limit: Some(1),
            ..Default::default()
        })?
        .into_iter()
        .next();
    // The last 24 hours, hour by hour, this hour last.
    let hour_ms = 3_600_000;
    let this_hour = crate::clock::now_ms() / hour_ms * hour_ms;
    let mut per_hour: Vec<HourCount> = (0..24)
        .rev()
        .map(|i| HourCount {
            hour: hour_label(this_hour - i * hour_ms),
            ..Default::default()
        })
        .collect();
    let since = crate::clock::utc_text(this_hour - 23 * hour_ms);
    for (hour, outcome, n) in reader.attempts_per_hour(&since)? {
        if let Some(h) = per_hour.iter_mut().find(|h| h.hour == hour) {
            if outcome == "delivered" {
                h.delivered += n;
            } else {
                h.failed += n;
            }
        }
    }
    let data = Overview {
        events_seen,
        owed,
        by_handler,
        orphaned,
        last_attempt,
        per_hour,
    };
    Ok(page(ctx, 200, "Overview", &data, |token| {
        pages::overview(&data, token)
    }))
}

fn hour_label(ms: i64) -> String {
    crate::clock::utc_text(ms)
        .get(..13)
        .unwrap_or_default()
        .to_owned()
}

/// `GET /events`.
#[derive(Serialize)]
pub struct EventsPage {
    pub q: Option<String>,
    pub group: Option<String>,
    pub page: usize,
    pub per_page: usize,
    pub events: Vec<SeenEvent>,
    /// Whether there is a next page.
    pub more: bool,
}

fn events(ctx: &Ctx<'_>, query: &[(String, String)]) -> Result<Reply, Fail> {
    let (page_no, per_page) = paging(query)?;
    let q = first(query, "q").map(str::to_owned);
    let group = first(query, "group").map(str::to_owned);
    for (name, value) in [("q", &q), ("group", &group)] {
        if value
            .as_ref()
            .is_some_and(|v| v.chars().count() > MAX_QUERY)
        {
            return Err(fail(
                400,
                format!("{name}: longer than {MAX_QUERY} characters"),
            ));
        }
    }
    let regex = group
        .as_deref()
        .map(|g| {
            regex::RegexBuilder::new(g)
                .size_limit(1 << 20)
                .build()
                .map_err(|e| fail(400, format!("group: not a regular expression: {e}")))
        })
        .transpose()?;
    let mut reader = backend::reader(ctx.console.config)?;
    reader.seen_table()?;
    let mut events = Vec::new();
    reader.list_events(
        &EventQuery {
            group: regex,
            text: q.clone(),
            limit: Some(per_page + 1),
            offset: (page_no - 1) * per_page,
            ..Default::default()
        },
        &mut |e| events.push(e),
    )?;
    let more = events.len() > per_page;
    events.truncate(per_page);
    let data = EventsPage {
        q,
        group,
        page: page_no,
        per_page,
        events,
        more,
    };
    Ok(page(ctx, 200, "Events", &data, |_| pages::events(&data)))
}

fn event(ctx: &Ctx<'_>, key: &str) -> Result<Reply, Fail> {
    let view = match ops::show(ctx.console.config, key) {
        Ok(view) => view,
        Err(Error::Usage(_)) => return Err(fail(404, format!("no event with key {key:?}"))),
        Err(e) => return Err(e.into()),
    };
    // The handlers the event could be replayed to.
    let replayable: Vec<String> = view
        .group
        .as_ref()
        .map(|g| {
            ctx.console
                .config
                .handlers_for(g)
                .map(|i| ctx.console.config.handlers[i].name.clone())
                .collect()
        })
        .unwrap_or_default();
    Ok(page(ctx, 200, "Event", &view, |token| {
        pages::event(&view, &replayable, token)
    }))
}

/// `GET /deliveries`.
#[derive(Serialize)]
pub struct DeliveriesPage {
    pub state: Option<String>,
    pub handler: Option<String>,
    pub page: usize,
    pub per_page: usize,
    /// Owed deliveries (one per key) the filter selects, in all pages.
    pub total: usize,
    pub deliveries: Vec<DeliveryLine>,
    /// `state=done`: the history's deliveries, newest first.
    pub done: Vec<HistoryEntry>,
    pub more: bool,
    /// The handlers of the config, for the filter.
    pub handlers: Vec<String>,
    pub max_keys: usize,
}

/// The states `/deliveries?state=` takes.
pub const STATES: [&str; 5] = ["dead", "failed", "pending", "in_flight", "done"];

fn deliveries(ctx: &Ctx<'_>, query: &[(String, String)]) -> Result<Reply, Fail> {
    let (page_no, per_page) = paging(query)?;
    let state = first(query, "state").map(str::to_owned);
    let handler = first(query, "handler").map(str::to_owned);
    if let Some(s) = &state
        && !STATES.contains(&s.as_str())
    {
        return Err(fail(
            400,
            format!("state: {s:?} is not one of {}", STATES.join(", ")),
        ));
    }
    let mut reader = backend::reader(ctx.console.config)?;
    let offset = (page_no - 1) * per_page;
    let mut data = DeliveriesPage {
        state: state.clone(),
        handler: handler.clone(),
        page: page_no,
        per_page,
        total: 0,
        deliveries: Vec::new(),
        done: Vec::new(),
        more: false,
        handlers: ctx
            .console
            .config
            .handler_names()
            .into_iter()
            .map(str::to_owned)
            .collect(),
        max_keys: MAX_KEYS,
    };
    if state.as_deref() == Some("done") {
        let mut done = reader.history(&HistoryQuery {
            outcomes: vec!["delivered".into()],
            handler,
            limit: Some(offset + per_page + 1),
            ..Default::default()
        })?;
        done.drain(..offset.min(done.len()));
        data.more = done.len() > per_page;
        done.truncate(per_page);
        data.done = done;
    } else {
        let lines = admin::list_deliveries(
            &reader.deliveries()?,
            &DeliveryQuery {
                states: state
                    .as_deref()
                    .and_then(DeliveryState::parse)
                    .into_iter()
                    .collect(),
                handler,
                keys: Vec::new(),
            },
        );
        data.total = lines.len();
        data.more = lines.len() > offset + per_page;
        data.deliveries = lines.into_iter().skip(offset).take(per_page).collect();
    }
    Ok(page(ctx, 200, "Deliveries", &data, |token| {
        pages::deliveries(&data, token)
    }))
}

/// What an action did.
#[derive(Serialize)]
pub struct ActionDone {
    pub action: &'static str,
    pub message: String,
    /// Each delivery acted on.
    pub deliveries: Vec<Acted>,
    /// Selected but left for a next request (over `MAX_KEYS`).
    pub left: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<crate::pipeline::RunReport>,
}

impl ActionDone {
    /// The page's title: the button's label.
    pub fn title(&self) -> &'static str {
        match self.action {
            "retry" => "Retry",
            "discard" => "Discard",
            _ => "Replay",
        }
    }
}

/// One delivery an action acted on.
#[derive(Serialize)]
pub struct Acted {
    pub handler: String,
    pub key: String,
}

fn acted(pairs: impl IntoIterator<Item = (String, String)>) -> Vec<Acted> {
    pairs
        .into_iter()
        .map(|(handler, key)| Acted { handler, key })
        .collect()
}

/// What a retry or discard form selects.
struct Selection {
    query: DeliveryQuery,
    /// Selected but left for a next request (over `MAX_KEYS`).
    left: usize,
    /// (handler, key) of each owed delivery it selects now.
    selected: Vec<(String, String)>,
}

/// The deliveries a retry or discard form selects: keys named, or a
/// handler's (at most `MAX_KEYS` of them, the rest counted).
fn selection(
    ctx: &Ctx<'_>,
    form: &[(String, String)],
    states: Vec<DeliveryState>,
    action: &str,
) -> Result<Selection, Fail> {
    let keys: Vec<String> = all(form, "key").into_iter().map(str::to_owned).collect();
    let handler = first(form, "handler").map(str::to_owned);
    if keys.is_empty() && handler.is_none() {
        return Err(fail(
            400,
            format!("{action}: say which deliveries: `key` (repeatable) and/or `handler`"),
        ));
    }
    if keys.len() > MAX_KEYS {
        return Err(fail(
            400,
            format!(
                "{action}: {} keys named; at most {MAX_KEYS} per request",
                keys.len()
            ),
        ));
    }
    if let Some(h) = &handler
        && !ctx.console.config.handlers.iter().any(|c| &c.name == h)
        && action == "retry"
    {
        return Err(fail(
            400,
            format!("{action}: no handler `{h}` in the config"),
        ));
    }
    // A page's state narrows the selection (`failed` or `dead` only).
    let states = match first(form, "state") {
        None => states,
        Some(s) => match DeliveryState::parse(s) {
            Some(state @ (DeliveryState::Failed | DeliveryState::Dead)) => vec![state],
            _ => {
                return Err(fail(
                    400,
                    format!(
                        "{action}: state {s:?}: only failed or dead deliveries are selected by state"
                    ),
                ));
            }
        },
    };
    let mut query = DeliveryQuery {
        states,
        handler,
        keys,
    };
    // What it selects now, one line per (handler, key); a handler's
    // selection cut to its first `MAX_KEYS` events.
    let lines = admin::list_deliveries(&backend::reader(ctx.console.config)?.deliveries()?, &query);
    let mut distinct = std::collections::HashSet::new();
    let keys: Vec<&String> = lines
        .iter()
        .map(|l| &l.key)
        .filter(|k| distinct.insert(*k))
        .collect();
    let left = keys.len().saturating_sub(MAX_KEYS);
    if left > 0 {
        query.keys = keys[..MAX_KEYS].iter().map(|k| (*k).clone()).collect();
    }
    let taken: std::collections::HashSet<&String> = query.keys.iter().collect();
    let selected = lines
        .iter()
        .filter(|l| taken.is_empty() || taken.contains(&l.key))
        .map(|l| (l.handler.clone(), l.key.clone()))
        .collect();
    Ok(Selection {
        query,
        left,
        selected,
    })
}

fn retry(ctx: &Ctx<'_>, form: &[(String, String)]) -> Result<ActionDone, Fail> {
    let Selection {
        query,
        left,
        selected,
    } = selection(
        ctx,
        form,
        vec![DeliveryState::Failed, DeliveryState::Dead],
        "retry",
    )?;
    let report = crate::pipeline::retry(
        ctx.console.config,
        ctx.console.registry,
        &query,
        &ctx.who(),
        ACTION_WAIT,
    )?;
    let message = if report.retried == 0 {
        "nothing to retry: no failed or dead delivery is selected".to_owned()
    } else {
        let mut m = format!(
            "retried {} deliveries: {} delivered, {} failed",
            report.retried,
            report.delivered(),
            report.failed()
        );
        if report.dead() > 0 {
            m.push_str(&format!(" ({} now dead)", report.dead()));
        }
        m
    };
    Ok(ActionDone {
        action: "retry",
        message,
        deliveries: acted(selected),
        left,
        report: Some(report),
    })
}

fn discard(ctx: &Ctx<'_>, form: &[(String, String)]) -> Result<ActionDone, Fail> {
    let Selection { query, left, .. } = selection(ctx, form, Vec::new(), "discard")?;
    let reason = first(form, "reason");
    let done = ops::discard(ctx.console.config, &query, reason, &ctx.who(), ACTION_WAIT)?;
    let mut message = format!("discarded {} deliveries", done.discarded.len());
    if done.left_to_other_workers > 0 {
        message.push_str(&format!(
            "; {} held by a worker right now were left alone",
            done.left_to_other_workers
        ));
    }
    Ok(ActionDone {
        action: "discard",
        message,
        deliveries: acted(done.discarded),
        left,
        report: None,
    })
}

fn replay(ctx: &Ctx<'_>, key: &str, form: &[(String, String)]) -> Result<ActionDone, Fail> {
    let Some(handler) = first(form, "handler") else {
        return Err(fail(400, "replay: say to which handler (`handler`)"));
    };
    let keys = [key.to_owned()];
    let done = ops::replay(
        ctx.console.config,
        &ReplayRequest {
            handler,
            query: &EventQuery::default(),
            keys: &keys,
            dry_run: false,
            text_contexts: first(form, "text_contexts") == Some("1"),
            wait: ACTION_WAIT,
        },
        &ctx.who(),
    )
    .map_err(|e| match e {
        Error::Usage(m) if m.contains("no such seen event") => fail(404, m),
        other => other.into(),
    })?;
    let message = if !done.replayed.is_empty() {
        format!("replayed to {handler}: owed now, delivered by the next run or worker")
    } else if !done.already_owed.is_empty() {
        format!("{handler} owes this event already; nothing added")
    } else {
        format!("{handler} does not receive this event's group; nothing added")
    };
    Ok(ActionDone {
        action: "replay",
        message,
        deliveries: acted(
            done.replayed
                .iter()
                .map(|k| (handler.to_owned(), k.clone())),
        ),
        left: 0,
        report: None,
    })
}
