//! The watch-fed view of everything under `auth/`: users, service accounts, tokens and
//! custom roles, decoded. Request paths read a snapshot of it and never the store.

use std::sync::Arc;

use sb_store::codec::{decode, StoredValue};
use sb_store::view::Entry;
use sb_store::{Event, EventKind, ViewState};
use tracing::warn;

use crate::model::{
    RoleRecord, ServiceAccountRecord, TokenRecord, UserRecord, ACCOUNTS_PREFIX, ROLES_PREFIX, TOKENS_PREFIX,
    USERS_PREFIX,
};

type Map<T> = imbl::OrdMap<String, Arc<Entry<T>>>;

#[derive(Clone, Default, Debug)]
pub struct AuthState {
    pub users: Map<UserRecord>,
    pub accounts: Map<ServiceAccountRecord>,
    /// By token id (the first 16 hex digits of the token's SHA-256).
    pub tokens: Map<TokenRecord>,
    pub roles: Map<RoleRecord>,
    pub undecodable: u64,
}

fn apply_to<T: StoredValue>(map: &mut Map<T>, name: &str, event: &Event, undecodable: &mut u64) {
    if event.kind == EventKind::Delete {
        map.remove(name);
        return;
    }
    let kv = &event.kv;
    match decode::<T>(&kv.value) {
        Ok(value) => {
            let entry = Entry {
                value,
                create_revision: kv.create_revision,
                mod_revision: kv.mod_revision,
                lease: kv.lease,
            };
            map.insert(name.to_owned(), Arc::new(entry));
        }
        Err(error) => {
            map.remove(name);
            *undecodable += 1;
            // The key of a token record is its id, not the token: safe to log.
            warn!(key = %String::from_utf8_lossy(&kv.key), %error, "skipping undecodable auth record");
        }
    }
}

impl ViewState for AuthState {
    fn apply(&mut self, event: &Event) {
        let Ok(key) = std::str::from_utf8(&event.kv.key) else {
            return;
        };
        let undecodable = &mut self.undecodable;
        if let Some(name) = key.strip_prefix(USERS_PREFIX) {
            apply_to(&mut self.users, name, event, undecodable);
        } else if let Some(name) = key.strip_prefix(ACCOUNTS_PREFIX) {
            apply_to(&mut self.accounts, name, event, undecodable);
        } else if let Some(id) = key.strip_prefix(TOKENS_PREFIX) {
            apply_to(&mut self.tokens, id, event, undecodable);
        } else if let Some(name) = key.strip_prefix(ROLES_PREFIX) {
            apply_to(&mut self.roles, name, event, undecodable);
        }
    }
}
