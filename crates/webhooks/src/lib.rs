//! Webhook deliveries from GitHub, GitLab, Gitea and Bitbucket Cloud, read the same way:
//! [`verify`] checks that a delivery was sent by the holder of the repository's webhook
//! secret, [`parse`] turns its body into a provider-neutral [`Event`], [`delivery_id`]
//! names it for de-duplication, and [`repository_key`] and [`touches`] decide which
//! stacks it concerns. Pure logic: the server passes the headers and the body in, nothing
//! here reads a socket, a clock or a file.

mod event;
mod parse;
mod provider;
mod repository;
pub mod trigger_paths;
mod verify;

pub use event::{Action, Event, PullRequest, PullRequestAction, Push, is_full_commit_id};
pub use parse::{ParseError, parse};
pub use provider::{Headers, Provider, UnknownProvider, delivery_id};
pub use repository::{repository_key, touches};
pub use verify::{SignatureError, verify};
