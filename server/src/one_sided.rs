//! Starting the one-sided transports the server exports its memory on.

use std::sync::Arc;

use dimstore_proto::OneSidedOffer;
use dimstore_transport::onesided::Exporter;
use dimstore_transport::TransportError;
use dimstore_transport_ofi::{OfiConfig, OfiExporter};
use dimstore_transport_ucx::{UcxConfig, UcxExporter};

use crate::config::{OneSided, ONE_SIDED_TRANSPORTS};
use crate::service::Exporters;

/// Starts the exporters `wanted` names. `host` is the advertised host, the default address
/// libfabric binds to. Under [`OneSided::Auto`] a transport that cannot start is logged and
/// skipped; a required one fails the start.
pub fn start(
    wanted: &OneSided,
    host: &str,
) -> Result<(Vec<OneSidedOffer>, Exporters), TransportError> {
    let (names, required): (Vec<&str>, bool) = match wanted {
        OneSided::None => (Vec::new(), false),
        OneSided::Auto => (ONE_SIDED_TRANSPORTS.to_vec(), false),
        OneSided::Required(names) => (names.iter().map(String::as_str).collect(), true),
    };
    let mut offers = Vec::new();
    let mut exporters = Vec::new();
    for name in names {
        let started: Result<Arc<dyn Exporter>, TransportError> = match name {
            "ucx" => UcxExporter::start(&UcxConfig::from_env()).map(|e| e as Arc<dyn Exporter>),
            "ofi" => OfiConfig::from_env().and_then(|mut config| {
                // shm names its endpoint after the node: a shared default would collide.
                if config.node.is_none() && host != "0.0.0.0" && config.provider != "shm" {
                    config.node = Some(host.to_string());
                }
                OfiExporter::start(&config).map(|e| e as Arc<dyn Exporter>)
            }),
            other => Err(TransportError::Unavailable {
                transport: other.to_string(),
                reason: "not a one-sided transport of this build".into(),
            }),
        };
        match started {
            Ok(exporter) => {
                tracing::info!(transport = name, detail = %exporter.detail(), "one-sided transport ready");
                offers.push(OneSidedOffer {
                    transport: exporter.name().to_string(),
                    detail: exporter.detail(),
                    address: exporter.address(),
                });
                exporters.push(exporter);
            }
            Err(e) if required => return Err(e),
            Err(e) => tracing::info!("one-sided transport {name} skipped: {e}"),
        }
    }
    Ok((offers, Exporters(exporters)))
}
