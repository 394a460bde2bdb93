//! The console's pages, rendered with maud: every value is escaped by the
//! template engine (text and attributes), secrets are masked before they
//! are written (`t`), links to events are built by `event_url`. No script;
//! one stylesheet.
//!
//! Not here: reading the data (`super::routes`).

use maud::{DOCTYPE, Markup, html};

use super::http::{encode, event_url};
use super::routes::{ActionDone, DeliveriesPage, EventsPage, MAX_KEYS, Overview, STATES};
use crate::ops::EventView;
use crate::store::HistoryEntry;

/// The stylesheet, served at `/static/spark.css`.
pub const CSS: &str = include_str!("spark.css");

/// `text` with secrets masked (escaping is maud's).
fn t(text: &str) -> String {
    crate::redact::redact(text).into_owned()
}

/// `text` with secrets masked, then cut to `max` characters.
fn clip(text: &str, max: usize) -> String {
    crate::escape::shorten(t(text), max)
}

/// A whole page: `title`, the header (with the navigation when `nav`
/// names who is signed in) and `body`.
fn document(title: &str, nav: Option<(&str, bool)>, body: Markup) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · spark" }
                link rel="stylesheet" href="/static/spark.css";
            }
            body {
                @if let Some((user, read_only)) = nav {
                    header {
                        a.brand href="/" { "spark" }
                        a href="/events" { "Events" }
                        a href="/deliveries" { "Deliveries" }
                        a href="/deliveries?state=dead" { "Dead" }
                        a href="/deliveries?state=failed" { "Failed" }
                        span.who {
                            (t(user))
                            @if read_only { " · read-only" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
    .into_string()
}

pub fn layout(title: &str, user: &str, read_only: bool, body: Markup) -> String {
    document(title, Some((user, read_only)), body)
}

/// An error's page (no navigation: it may answer someone not signed in).
pub fn error_page(status: u16, message: &str) -> String {
    let title = match status {
        400 => "Bad request",
        401 => "Who are you?",
        403 => "Refused",
        404 => "Not found",
        405 => "Not here",
        409 => "Busy",
        413 => "Too large",
        _ => "Error",
    };
    document(
        &format!("{status} {title}"),
        None,
        html! {
            h1 { (status) " " (title) }
            p.flash.bad { (message) }
            p { a href="/" { "Back to the overview" } }
        },
    )
}

/// The Retry button of one delivery, if it is failed or dead.
fn retry_button(token: &str, state: &str, key: &str, handler: &str) -> Markup {
    html! {
        @if state == "failed" || state == "dead" {
            form.inline method="post" action="/deliveries/retry" {
                (csrf(token))
                input type="hidden" name="key" value=(key);
                input type="hidden" name="handler" value=(handler);
                button type="submit" { "Retry" }
            }
        }
    }
}

/// The hidden token field of a form.
fn csrf(token: &str) -> Markup {
    html! { input type="hidden" name="csrf" value=(token); }
}

pub fn overview(data: &Overview, token: Option<&str>) -> Markup {
    let owed = |state: &str| data.owed.get(state).copied().unwrap_or(0);
    html! {
        h1 { "Overview" }
        div.cards {
            a.card href="/events" { b { (data.events_seen) } "events seen" }
            a.card.dead href="/deliveries?state=dead" { b { (owed("dead")) } "dead" }
            a.card.failed href="/deliveries?state=failed" { b { (owed("failed")) } "failed" }
            a.card href="/deliveries?state=pending" { b { (owed("pending")) } "pending" }
            a.card href="/deliveries?state=in_flight" { b { (owed("in_flight")) } "in flight" }
        }
        p.mute {
            @match &data.last_attempt {
                Some(e) => {
                    "Last delivery attempt: " (t(&e.at)) " UTC, "
                    a href=(event_url(&e.key)) { code { (clip(&e.key, 80)) } }
                    " to " (t(&e.handler)) ": "
                    span class=(format!("state-{}", e.outcome)) { (t(&e.outcome)) }
                },
                None => "No delivery attempt in the history yet.",
            }
        }
        h2 { "Attempts per hour, last 24 hours (UTC)" }
        (chart(data))
        h2 { "Owed deliveries by handler" }
        @if data.by_handler.is_empty() {
            p.mute { "Nothing is owed: every event was delivered." }
        } @else {
            table {
                tr { th { "Handler" } th { "State" } th.num { "Events" } }
                @for row in &data.by_handler {
                    tr {
                        td {
                            (t(&row.handler))
                            @if !row.in_config { span.mute { " (not in the config)" } }
                        }
                        td { a class=(format!("state-{}", row.state))
                               href=(format!("/deliveries?state={}&handler={}", encode(&row.state), encode(&row.handler))) { (row.state) } }
                        td.num { (row.events) }
                    }
                }
            }
        }
        @if !data.orphaned.is_empty() {
            h2 { "Orphaned handlers" }
            p.mute { "Deliveries owed to handlers no longer in the config: reassign them (spark reassign OLD NEW) or discard them." }
            table {
                tr { th { "Handler" } th.num { "Events" } th { "First keys" } th {} }
                @for o in &data.orphaned {
                    tr {
                        td { (t(&o.handler)) }
                        td.num { (o.events) }
                        td { @for k in &o.keys { a href=(event_url(k)) { code { (clip(k, 60)) } } " " } }
                        td {
                            @if let Some(token) = token {
                                form.inline method="post" action="/deliveries/discard" {
                                    (csrf(token))
                                    input type="hidden" name="handler" value=(o.handler);
                                    input type="text" name="reason" placeholder="reason" required;
                                    button.danger type="submit" { "Discard" }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Attempts per hour as bars: delivered, failed stacked on them.
fn chart(data: &Overview) -> Markup {
    let (w, h, top) = (20i64, 100i64, 12i64);
    let max = data
        .per_hour
        .iter()
        .map(|x| x.delivered + x.failed)
        .max()
        .unwrap_or(0)
        .max(1);
    let scale = |n: u64| (n as f64 / max as f64 * (h - top) as f64).round() as i64;
    html! {
        svg.chart xmlns="http://www.w3.org/2000/svg" viewBox=(format!("0 0 {} {}", w * 24, h + 14))
            role="img" aria-label="delivery attempts per hour" {
            text x="2" y="9" { "max " (max) "/h" }
            @for (i, x) in data.per_hour.iter().enumerate() {
                @let ok = scale(x.delivered);
                @let bad = scale(x.failed);
                @let left = i as i64 * w + 2;
                @if ok > 0 {
                    rect.ok x=(left) y=(h - ok) width=(w - 4) height=(ok) {
                        title { (x.hour) ":00 UTC: " (x.delivered) " delivered" }
                    }
                }
                @if bad > 0 {
                    rect.bad x=(left) y=(h - ok - bad) width=(w - 4) height=(bad) {
                        title { (x.hour) ":00 UTC: " (x.failed) " failed" }
                    }
                }
                @if i % 6 == 0 {
                    text x=(left) y=(h + 11) { (x.hour.get(11..).unwrap_or("")) "h" }
                }
            }
        }
    }
}

pub fn events(data: &EventsPage) -> Markup {
    let link = |page: usize| {
        format!(
            "/events?q={}&group={}&page={page}&per_page={}",
            encode(data.q.as_deref().unwrap_or("")),
            encode(data.group.as_deref().unwrap_or("")),
            data.per_page
        )
    };
    html! {
        h1 { "Events" }
        form.filters method="get" action="/events" {
            label { "Key or context contains" input type="search" name="q" value=(data.q.as_deref().unwrap_or("")); }
            label { "Group (regex)" input type="text" name="group" value=(data.group.as_deref().unwrap_or("")); }
            button type="submit" { "Search" }
        }
        @if data.events.is_empty() {
            p.mute { "No event matches." }
        } @else {
            table {
                tr { th { "Key" } th { "Group" } th { "Created (UTC)" } th { "Context" } }
                @for e in &data.events {
                    tr {
                        td { a.key href=(event_url(&e.key)) { (clip(&e.key, 120)) } }
                        td { (clip(&e.group, 60)) }
                        td { (t(&e.created_at)) }
                        td.mute { code { (clip(&context_line(&e.context), 120)) } }
                    }
                }
            }
        }
        (pager(data.page, data.more, link))
    }
}

fn context_line(context: &serde_json::Value) -> String {
    match context {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn pager(page: usize, more: bool, link: impl Fn(usize) -> String) -> Markup {
    html! {
        div.pager {
            @if page > 1 { a href=(link(page - 1)) rel="prev" { "← Newer" } }
            span.mute { "page " (page) }
            @if more { a href=(link(page + 1)) rel="next" { "Older →" } }
        }
    }
}

pub fn event(view: &EventView, replayable: &[String], token: Option<&str>) -> Markup {
    html! {
        h1 { "Event " code { (clip(&view.key, 300)) } }
        @match (&view.group, &view.created_at) {
            (Some(group), Some(created_at)) => {
                table {
                    tr { th { "Group" } td { (t(group)) } }
                    tr { th { "Created (UTC)" } td { (t(created_at)) } }
                }
                h2 { "Context" }
                @if view.recorded_before_spark {
                    p.mute { "As django-spark stored it (not JSON): recorded before spark." }
                }
                pre { (t(&view.context_text())) }
            },
            _ => p.mute { "Not in the seen table (forgotten or pruned); the delivery log still knows it." },
        }
        @for story in &view.handlers {
            h2 {
                "Handler " (t(&story.handler)) ": "
                span class=(format!("state-{}", story.state.split(' ').next().unwrap_or(""))) { (t(&story.state)) }
                @if !story.in_config { span.mute { " (not in the config)" } }
            }
            @for o in &story.owed {
                p {
                    "Owed: " span class=(format!("state-{}", o.state)) { (o.state) }
                    " after " (o.attempts) " attempts"
                    @if let Some(at) = &o.next_attempt_at { ", next at " (t(at)) " UTC" }
                    @if let (Some(w), Some(until)) = (&o.worker, &o.lease_until) { ", held by " (t(w)) " until " (t(until)) " UTC" }
                }
                @if let Some(err) = &o.last_error {
                    p { "Last error: " span.err { (clip(err, 4000)) } }
                }
                @if let Some(token) = token {
                    (retry_button(token, &o.state, &view.key, &story.handler))
                    @if o.state != "in_flight" {
                        form.inline method="post" action="/deliveries/discard" {
                            (csrf(token))
                            input type="hidden" name="key" value=(view.key);
                            input type="hidden" name="handler" value=(story.handler);
                            input type="text" name="reason" placeholder="reason" required aria-label="reason";
                            button.danger type="submit" { "Discard" }
                        }
                    }
                }
            }
            @if !story.attempts.is_empty() {
                (history_table(&story.attempts, false))
            }
        }
        @if let Some(token) = token {
            @if !replayable.is_empty() {
                h2 { "Replay" }
                p.mute { "Deliver this event again to a handler (it is owed now and delivered by the next run or worker)." }
                form.inline method="post" action=(replay_url(&view.key)) {
                    (csrf(token))
                    input type="hidden" name="key" value=(view.key);
                    select name="handler" aria-label="handler" {
                        @for h in replayable { option value=(h) { (h) } }
                    }
                    @if view.recorded_before_spark {
                        label { input type="checkbox" name="text_contexts" value="1"; "send its stored text as context" }
                    }
                    button type="submit" { "Replay" }
                }
            }
        }
    }
}

/// Where an event's replay form posts.
fn replay_url(key: &str) -> String {
    let page = event_url(key);
    match page.strip_prefix("/events/?") {
        // `.`, `..`, the empty key: by field.
        Some(_) => "/events//replay".to_owned(),
        None => format!("{page}/replay"),
    }
}

fn history_table(entries: &[HistoryEntry], with_key: bool) -> Markup {
    html! {
        table {
            tr {
                th { "At (UTC)" }
                @if with_key { th { "Key" } th { "Handler" } }
                th { "Outcome" } th.num { "Attempt" } th.num { "ms" } th { "Error or reason" }
            }
            @for e in entries {
                tr {
                    td { (t(&e.at)) }
                    @if with_key {
                        td { a.key href=(event_url(&e.key)) { (clip(&e.key, 100)) } }
                        td { (t(&e.handler)) }
                    }
                    td { span class=(format!("state-{}", e.outcome)) { (t(&e.outcome)) } }
                    td.num { (e.attempt) }
                    td.num { @if let Some(ms) = e.ms { (ms) } @else { "-" } }
                    td {
                        @if let Some(by) = &e.by { span.mute { "by " (t(by)) } @if e.error.is_some() { ": " } }
                        @if let Some(err) = &e.error { span.err { (clip(err, 2000)) } }
                    }
                }
            }
        }
    }
}

pub fn deliveries(data: &DeliveriesPage, token: Option<&str>) -> Markup {
    let link = |page: usize| {
        format!(
            "/deliveries?state={}&handler={}&page={page}&per_page={}",
            encode(data.state.as_deref().unwrap_or("")),
            encode(data.handler.as_deref().unwrap_or("")),
            data.per_page
        )
    };
    let actionable = matches!(data.state.as_deref(), Some("dead" | "failed"));
    html! {
        h1 {
            "Deliveries"
            @if let Some(s) = &data.state { ": " span class=(format!("state-{s}")) { (s) } }
        }
        form.filters method="get" action="/deliveries" {
            label { "State"
                select name="state" {
                    option value="" { "owed (any)" }
                    @for s in STATES { option value=(s) selected[data.state.as_deref() == Some(s)] { (s) } }
                }
            }
            label { "Handler"
                select name="handler" {
                    option value="" { "any" }
                    @for h in &data.handlers { option value=(h) selected[data.handler.as_deref() == Some(h.as_str())] { (h) } }
                }
            }
            button type="submit" { "Show" }
        }
        @if data.state.as_deref() == Some("done") {
            @if data.done.is_empty() { p.mute { "No delivery in the history." } }
            @else { (history_table(&data.done, true)) }
        } @else {
            p.mute { (data.total) " owed (one line per event and handler)." }
            @if data.deliveries.is_empty() {
                p.mute { "Nothing here." }
            } @else {
                @if token.is_some() && actionable {
                    form id="bulk" method="post" action="/deliveries/retry" {}
                }
                table {
                    tr {
                        @if token.is_some() && actionable { th { "Select" } }
                        th { "Handler" } th { "Key" } th { "State" } th.num { "Attempts" } th { "Next attempt (UTC)" } th { "Last error" } th {}
                    }
                    @for d in &data.deliveries {
                        tr {
                            @if token.is_some() && actionable {
                                td { input type="checkbox" name="key" value=(d.key) form="bulk" aria-label="select"; }
                            }
                            td { (t(&d.handler)) }
                            td { a.key href=(event_url(&d.key)) { (clip(&d.key, 100)) } }
                            td {
                                span class=(format!("state-{}", d.state)) { (d.state) }
                                @if let (Some(w), Some(until)) = (&d.worker, &d.lease_until) {
                                    span.mute { " by " (t(w)) " until " (t(until)) }
                                }
                            }
                            td.num { (d.attempts) }
                            td { (t(d.next_attempt_at.as_deref().unwrap_or("-"))) }
                            td { span.err { (clip(d.last_error.as_deref().unwrap_or("-"), 300)) } }
                            td {
                                @if let Some(token) = token {
                                    (retry_button(token, &d.state, &d.key, &d.handler))
                                }
                            }
                        }
                    }
                }
                @if let Some(token) = token {
                    @if actionable {
                        div {
                            p.mute { "Bulk actions act on at most " (MAX_KEYS) " events per request; press again for the next ones." }
                            @if let Some(h) = &data.handler {
                                input type="hidden" name="handler" value=(h) form="bulk";
                            }
                            @if let Some(s) = &data.state {
                                input type="hidden" name="state" value=(s) form="bulk";
                            }
                            input type="hidden" name="csrf" value=(token) form="bulk";
                            button type="submit" form="bulk" { "Retry selected" }
                            @if let Some(h) = &data.handler {
                                @let state = data.state.as_deref().unwrap_or("");
                                form.inline method="post" action="/deliveries/retry" {
                                    (csrf(token))
                                    input type="hidden" name="handler" value=(h);
                                    input type="hidden" name="state" value=(state);
                                    button type="submit" { "Retry all " (state) " of " (h) }
                                }
                                form.inline method="post" action="/deliveries/discard" {
                                    (csrf(token))
                                    input type="hidden" name="handler" value=(h);
                                    input type="hidden" name="state" value=(state);
                                    input type="text" name="reason" placeholder="reason" required aria-label="reason";
                                    button.danger type="submit" { "Discard all " (state) " of " (h) }
                                }
                            }
                        }
                    }
                }
            }
        }
        (pager(data.page, data.more, link))
    }
}

pub fn action_done(done: &ActionDone, _token: Option<&str>) -> Markup {
    html! {
        h1 { (done.title()) }
        p.flash { (t(&done.message)) }
        @if done.left > 0 {
            p { (done.left) " more were selected; at most " (MAX_KEYS) " per request: do it again for the next ones." }
        }
        @if !done.deliveries.is_empty() {
            table {
                tr { th { "Handler" } th { "Key" } }
                @for d in done.deliveries.iter().take(MAX_KEYS) {
                    tr { td { (t(&d.handler)) } td { a.key href=(event_url(&d.key)) { (clip(&d.key, 120)) } } }
                }
            }
        }
        @if let Some(report) = &done.report {
            @for f in &report.failures {
                p {
                    (t(&f.handler)) " "
                    a.key href=(event_url(&f.key)) { (clip(&f.key, 120)) }
                    @if f.dead { " is dead" } @else { " failed" }
                    " after " (f.attempts) " attempts: "
                    span.err { (clip(&f.error, 2000)) }
                }
            }
        }
        p { a href="/deliveries" { "Deliveries" } " · " a href="/" { "Overview" } }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_cut_never_shows_the_start_of_a_secret() {
        crate::redact::register("page-secret-0123456789");
        let text = format!("{}page-secret-0123456789 and more", "x".repeat(70));
        let clipped = super::clip(&text, 80);
        assert!(!clipped.contains("page-sec"), "{clipped}");
        assert!(clipped.contains("***"), "{clipped}");
    }
}
