//! The `clusterconf` provider: the cluster's declared configuration as typed objects in the
//! cluster store (layout and types: `cerana_protocol::tasks::clusterconf`).
//!
//! Writes are compare-and-swap on the object's `mod_index`, so two operators editing the same
//! bundle never silently overwrite each other. A bundle is accepted only when the services,
//! datasets and bundles it names exist; a dataset, service or bundle still named by another
//! object is not deleted (`busy`, naming who uses it).

pub mod auth;
mod history;
pub mod import;

use cerana_protocol::tasks::clusterconf::{self as c, ObjectId, MAX_OBJECT_BYTES, PREFIX};
use cerana_protocol::tasks::kv::MAX_PAGE;
use cerana_protocol::{ErrorCode, NoOutput, TaskError};
use cerana_provider_sdk::Provider;
use cerana_store::{store_task, task_error, LazyStore, Store};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::BTreeMap;

/// A declared object kept under `PREFIX/KIND/ID`.
trait Object: Serialize + DeserializeOwned + Send + 'static {
    /// The folder (`datasets`) and what one is called (`dataset`).
    const KIND: &'static str;
    const ONE: &'static str;
    fn id(&self) -> String;
    fn set_mod_index(&mut self, index: u64);
    fn mod_index(&self) -> u64;
}

macro_rules! object {
    ($ty:ty, $kind:literal, $one:literal, |$o:ident| $id:expr) => {
        impl Object for $ty {
            const KIND: &'static str = $kind;
            const ONE: &'static str = $one;
            fn id(&self) -> String {
                let $o = self;
                $id
            }
            fn set_mod_index(&mut self, index: u64) {
                self.mod_index = index;
            }
            fn mod_index(&self) -> u64 {
                self.mod_index
            }
        }
    };
}

object!(c::Dataset, "datasets", "dataset", |o| o.id.to_string());
object!(c::Service, "services", "service", |o| o.id.to_string());
object!(c::Bundle, "bundles", "bundle", |o| o.id.to_string());
object!(c::Node, "nodes", "node", |o| o.id.clone());
object!(c::ClusterDefaults, "cluster", "cluster defaults", |_o| "defaults".into());
object!(c::DhcpConfig, "cluster", "DHCP configuration", |_o| "dhcp".into());

fn key_of<T: Object>(id: &str) -> String {
    format!("{PREFIX}/{}/{id}", T::KIND)
}

fn bad(field: impl std::fmt::Display) -> TaskError {
    TaskError::new(ErrorCode::InvalidArgument, field.to_string())
}

fn decode<T: Object>(key: &str, json: &str, index: u64) -> Result<T, TaskError> {
    let mut object: T = serde_json::from_str(json)
        .map_err(|e| TaskError::new(ErrorCode::Failed, format!("{key} in the store is not a valid {}: {e}", T::ONE)))?;
    object.set_mod_index(index);
    Ok(object)
}

async fn get<T: Object>(s: &Store, id: &str) -> Result<Option<T>, TaskError> {
    let key = key_of::<T>(id);
    match s.get(&key).await.map_err(task_error)? {
        Some(entry) => decode(&key, &entry.value, entry.index).map(Some),
        None => Ok(None),
    }
}

async fn must_get<T: Object>(s: &Store, id: &str) -> Result<T, TaskError> {
    get(s, id).await?.ok_or_else(|| TaskError::new(ErrorCode::NotFound, format!("{} {id} does not exist", T::ONE)))
}

async fn list<T: Object>(s: &Store) -> Result<Vec<T>, TaskError> {
    let prefix = format!("{PREFIX}/{}/", T::KIND);
    let mut objects = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = s.list(&prefix, after.as_deref(), MAX_PAGE, false).await.map_err(task_error)?;
        after = page.entries.last().map(|e| e.key.clone());
        for entry in page.entries {
            objects.push(decode(&entry.key, &entry.value, entry.index)?);
        }
        if !page.more || after.is_none() {
            return Ok(objects);
        }
    }
}

/// Writes `object` if its `mod_index` is current (0: only if new); returns it with the new one.
async fn put<T: Object>(s: &Store, mut object: T) -> Result<T, TaskError> {
    let mut json = serde_json::to_value(&object).map_err(|e| TaskError::new(ErrorCode::Internal, e.to_string()))?;
    // The index is the key's revision, not part of what is stored.
    if let Some(fields) = json.as_object_mut() {
        fields.remove("mod_index");
    }
    let text = json.to_string();
    if text.len() > MAX_OBJECT_BYTES {
        return Err(bad(format!("the {} is {} bytes as JSON; at most {MAX_OBJECT_BYTES}", T::ONE, text.len())));
    }
    let key = key_of::<T>(&object.id());
    let index = s.put_if(&key, &text, object.mod_index()).await.map_err(|e| {
        let mut err = task_error(e);
        if err.code == ErrorCode::Conflict {
            err.message = match object.mod_index() {
                0 => format!("{} {} exists already: send its mod_index to replace it", T::ONE, object.id()),
                sent => format!("{} {} changed since mod_index {sent}: read it again", T::ONE, object.id()),
            };
        }
        err
    })?;
    object.set_mod_index(index);
    Ok(object)
}

async fn delete<T: Object>(s: &Store, id: &str, mod_index: Option<u64>) -> Result<NoOutput, TaskError> {
    let key = key_of::<T>(id);
    match mod_index {
        Some(index) => {
            s.delete_if(&key, index).await.map_err(task_error)?;
        }
        None => {
            let (deleted, _) = s.delete(&key, false).await.map_err(task_error)?;
            if deleted == 0 {
                return Err(TaskError::new(ErrorCode::NotFound, format!("{} {id} does not exist", T::ONE)));
            }
        }
    }
    Ok(NoOutput {})
}

fn busy(what: String, users: Vec<String>) -> Result<(), TaskError> {
    if users.is_empty() {
        return Ok(());
    }
    Err(TaskError::new(ErrorCode::Busy, format!("{what} is used by {}", users.join(", ")))
        .with_details(serde_json::json!({ "used_by": users })))
}

/// Every service, dataset and bundle `bundle` names must exist (errors name the field).
async fn check_references(s: &Store, bundle: &c::Bundle) -> Result<(), TaskError> {
    for (name, service) in &bundle.services {
        if get::<c::Service>(s, service.id.as_str()).await?.is_none() {
            return Err(bad(format!("services.{name}.id: service {} does not exist", service.id)));
        }
    }
    for (name, dataset) in &bundle.datasets {
        if get::<c::Dataset>(s, dataset.id.as_str()).await?.is_none() {
            return Err(bad(format!("datasets.{name}.id: dataset {} does not exist", dataset.id)));
        }
    }
    for (port, spec) in &bundle.ports {
        for other in &spec.connected_bundles {
            if *other != bundle.id && get::<c::Bundle>(s, other.as_str()).await?.is_none() {
                return Err(bad(format!("ports.{port}.connected_bundles: bundle {other} does not exist")));
            }
        }
    }
    Ok(())
}

async fn view(s: &Store, bundle: c::Bundle, overlay: bool) -> Result<c::BundleView, TaskError> {
    let mut services = BTreeMap::new();
    if overlay {
        for (name, entry) in &bundle.services {
            let base = must_get::<c::Service>(s, entry.id.as_str()).await?;
            services.insert(name.clone(), base.overlaid(&entry.overrides));
        }
    }
    Ok(c::BundleView { bundle, services })
}

/// The whole `cerana-clusterconf` program.
pub fn main() -> std::process::ExitCode {
    cerana_store::provider_main("clusterconf", |store| provider_with(store).main())
}

fn id(id: &ObjectId) -> &str {
    id.as_str()
}

/// The provider over `store`.
pub fn provider_with(store: LazyStore) -> Provider {
    let p = auth::tasks(Provider::new("clusterconf", env!("CARGO_PKG_VERSION")), &store);
    let p = store_task!(p, store, c::GetDataset, |s, args| must_get(s, id(&args.id)).await);
    let p = store_task!(p, store, c::ListDatasets, |s, _args| Ok(c::DatasetList { datasets: list(s).await? }));
    let p = store_task!(p, store, c::UpdateDataset, |s, args| {
        let dataset = args.0;
        dataset.validate().map_err(bad)?;
        if let Some(parent) = &dataset.parent {
            if get::<c::Dataset>(s, parent.as_str()).await?.is_none() {
                return Err(bad(format!("parent: dataset {parent} does not exist")));
            }
        }
        put(s, dataset).await
    });
    let p = store_task!(p, store, c::DeleteDataset, |s, args| {
        let mut users: Vec<String> = list::<c::Bundle>(s)
            .await?
            .into_iter()
            .filter(|b| b.datasets.values().any(|d| d.id == args.id))
            .map(|b| format!("bundle {}", b.id))
            .collect();
        users.extend(
            list::<c::Service>(s)
                .await?
                .into_iter()
                .filter(|v| v.dataset == args.id)
                .map(|v| format!("service {}", v.id)),
        );
        users.extend(
            list::<c::Dataset>(s)
                .await?
                .into_iter()
                .filter(|d| d.parent.as_ref() == Some(&args.id))
                .map(|d| format!("dataset {}", d.id)),
        );
        busy(format!("dataset {}", args.id), users)?;
        delete::<c::Dataset>(s, id(&args.id), args.mod_index).await
    });
    let p = store_task!(p, store, c::GetService, |s, args| must_get(s, id(&args.id)).await);
    let p = store_task!(p, store, c::ListServices, |s, _args| Ok(c::ServiceList { services: list(s).await? }));
    let p = store_task!(p, store, c::UpdateService, |s, args| {
        let service = args.0;
        service.validate().map_err(bad)?;
        if get::<c::Dataset>(s, service.dataset.as_str()).await?.is_none() {
            return Err(bad(format!("dataset: dataset {} does not exist", service.dataset)));
        }
        put(s, service).await
    });
    let p = store_task!(p, store, c::DeleteService, |s, args| {
        let users = list::<c::Bundle>(s)
            .await?
            .into_iter()
            .filter(|b| b.services.values().any(|v| v.id == args.id))
            .map(|b| format!("bundle {}", b.id))
            .collect();
        busy(format!("service {}", args.id), users)?;
        delete::<c::Service>(s, id(&args.id), args.mod_index).await
    });
    let p =
        store_task!(p, store, c::GetBundle, |s, args| view(s, must_get(s, id(&args.id)).await?, args.overlay).await);
    let p = store_task!(p, store, c::ListBundles, |s, args| {
        let mut bundles = Vec::new();
        for bundle in list::<c::Bundle>(s).await? {
            bundles.push(view(s, bundle, args.overlay).await?);
        }
        Ok(c::BundleList { bundles })
    });
    let p = store_task!(p, store, c::UpdateBundle, |s, args| {
        let bundle = args.0;
        bundle.validate().map_err(bad)?;
        check_references(s, &bundle).await?;
        put(s, bundle).await
    });
    let p = store_task!(p, store, c::DeleteBundle, |s, args| {
        let users = list::<c::Bundle>(s)
            .await?
            .into_iter()
            .filter(|b| b.id != args.id && b.ports.values().any(|port| port.connected_bundles.contains(&args.id)))
            .map(|b| format!("bundle {}", b.id))
            .collect();
        busy(format!("bundle {}", args.id), users)?;
        delete::<c::Bundle>(s, id(&args.id), args.mod_index).await
    });
    let p = store_task!(p, store, c::GetNode, |s, args| must_get(s, id(&args.id)).await);
    let p = store_task!(p, store, c::ListNodes, |s, _args| Ok(c::NodeList { nodes: list(s).await? }));
    let p = store_task!(p, store, c::GetNodesHistory, |s, args| history::nodes_history(s, args).await);
    let import_store = store.clone();
    let p = p.task::<c::ImportDataset, _, _>(move |ctx, args| {
        let store = import_store.clone();
        async move { import::import(&ctx, &store, args).await }
    });
    let p = store_task!(p, store, c::GetDefaultOptions, |s, _args| {
        Ok(get::<c::ClusterDefaults>(s, "defaults").await?.unwrap_or_default())
    });
    let p = store_task!(p, store, c::SetDefaultOptions, |s, args| {
        let defaults = args.0;
        defaults.validate().map_err(bad)?;
        put(s, defaults).await
    });
    let p = store_task!(p, store, c::GetDhcpConfig, |s, _args| must_get::<c::DhcpConfig>(s, "dhcp").await);
    store_task!(p, store, c::SetDhcpConfig, |s, args| {
        let config = args.0;
        config.validate().map_err(bad)?;
        put(s, config).await
    })
}
