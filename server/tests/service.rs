//! The request handler ([`StoreService`]) driven directly, as a transport drives it, over a
//! real object store and arena: no sockets, no server process.
//!
//! Each test opens sessions, asks for payload sinks, fills them as a transport would with a
//! request's payload, and checks the replies and what the store holds afterwards.

use std::time::Duration;

use dimstore_arena::{Arena, ArenaConfig};
use dimstore_proto::{
    ErrorReply, GetItem, Hello, ObjectId, PutOptions, Request, Response, ServerStats, Status,
};
use dimstore_server::eviction::Policy;
use dimstore_server::service::{Exporters, Session};
use dimstore_server::store::Object;
use dimstore_server::{ObjectStore, ServiceIdentity, StoreService};
use dimstore_transport::{Outcome, PeerInfo, Reply, Service};

/// Memory limit of the test stores.
const CAPACITY: u64 = 4 << 20;

fn service(token: Option<&str>) -> StoreService {
    service_evicting(token, Policy::None)
}

fn service_evicting(token: Option<&str>, policy: Policy) -> StoreService {
    let arena = Arena::new(ArenaConfig {
        capacity: CAPACITY,
        segment_size: 1 << 20,
    });
    let store = ObjectStore::new(arena, 1, Duration::from_secs(3600)).with_eviction(policy);
    let identity = ServiceIdentity {
        node: "n1".into(),
        advertised: "127.0.0.1:7100".into(),
        token: token.map(str::to_owned),
        server_id: 99,
        transports: vec!["tcp".into()],
        local_socket: None,
        one_sided: Vec::new(),
        lease_timeout: Duration::from_secs(30),
        binding: String::new(),
        functions: None,
    };
    StoreService::new(store, identity, Exporters::default())
}

fn open(service: &StoreService) -> Session {
    service.open_session(
        "tcp",
        PeerInfo {
            address: "127.0.0.1:50000".into(),
            uid: None,
        },
    )
}

fn hello(token: Option<&str>) -> Request {
    Request::Hello(Hello {
        token: token.map(str::to_owned),
        client_node: "n2".into(),
        client_pid: 1,
        map: false,
        map_from: 0,
    })
}

/// One request with its payload, as a transport runs it: sinks first, the payload written
/// into them back to back, then the handler. `Err` when the sinks are refused.
fn call(
    service: &StoreService,
    session: &mut Session,
    request: Request,
    payload: &[u8],
) -> Result<Reply<Object>, ErrorReply> {
    let mut sinks = service.payload_sinks(session, &request, payload.len() as u64)?;
    let mut rest = payload;
    for sink in &mut sinks {
        let bytes = sink.as_mut();
        let (head, tail) = rest.split_at(bytes.len());
        bytes.copy_from_slice(head);
        rest = tail;
    }
    assert!(rest.is_empty(), "the sinks hold the whole payload");
    match service.handle(session, request, sinks) {
        Outcome::Ready(reply) => Ok(reply),
        Outcome::Deferred(_) => panic!("a reply that waits for nothing is ready at once"),
    }
}

/// The response of a request without payload.
fn ask(service: &StoreService, session: &mut Session, request: Request) -> Response {
    call(service, session, request, &[])
        .expect("no payload, no sinks")
        .response
}

/// A greeted session.
fn greeted(service: &StoreService) -> Session {
    let mut session = open(service);
    assert!(matches!(
        ask(service, &mut session, hello(None)),
        Response::Hello(_)
    ));
    session
}

/// Puts `objects` in one request; their ids.
fn put(service: &StoreService, session: &mut Session, objects: &[&[u8]]) -> Vec<ObjectId> {
    let sizes = objects.iter().map(|o| o.len() as u64).collect();
    let reply = call(service, session, Request::Put { sizes }, &objects.concat()).expect("room");
    match reply.response {
        Response::Put { ids } => ids,
        other => panic!("put answered {other:?}"),
    }
}

/// A get without waiting: the items and the payload's objects.
fn get(
    service: &StoreService,
    session: &mut Session,
    ids: &[ObjectId],
) -> (Vec<GetItem>, Vec<Vec<u8>>) {
    let request = Request::Get {
        ids: ids.to_vec(),
        wait_ms: 0,
    };
    let reply = call(service, session, request, &[]).expect("no payload");
    let Response::Get { items } = reply.response else {
        panic!("get answered {:?}", reply.response);
    };
    let payload = reply.payload.iter().map(|o| o.as_ref().to_vec()).collect();
    (items, payload)
}

fn stats(service: &StoreService, session: &mut Session) -> ServerStats {
    match ask(service, session, Request::Stats) {
        Response::Stats(stats) => stats,
        other => panic!("stats answered {other:?}"),
    }
}

fn status(response: Response) -> Status {
    match response {
        Response::Error(e) => e.status,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn nothing_but_hello_is_answered_before_hello() {
    let service = service(None);
    let mut session = open(&service);
    assert!(!service.authenticated(&session));
    assert_eq!(
        status(ask(&service, &mut session, Request::Stats)),
        Status::BadRequest
    );
    let refused = service
        .payload_sinks(&mut session, &Request::Put { sizes: vec![4] }, 4)
        .expect_err("no sinks before hello");
    assert_eq!(refused.status, Status::BadRequest);
    let Response::Hello(reply) = ask(&service, &mut session, hello(None)) else {
        panic!("hello refused");
    };
    assert!(service.authenticated(&session));
    assert_eq!(
        (reply.node.as_str(), reply.server_id, reply.max_object),
        ("n1", 99, CAPACITY)
    );
    assert!(!reply.mapped, "a TCP session is never mapped");
}

#[test]
fn a_wrong_token_is_refused_and_revokes_an_earlier_hello() {
    let service = service(Some("secret"));
    let mut session = open(&service);
    for token in [None, Some("guess")] {
        assert_eq!(
            status(ask(&service, &mut session, hello(token))),
            Status::Unauthorized
        );
        assert!(!service.authenticated(&session));
    }
    assert!(matches!(
        ask(&service, &mut session, hello(Some("secret"))),
        Response::Hello(_)
    ));
    assert!(service.authenticated(&session));
    assert_eq!(
        status(ask(&service, &mut session, hello(Some("guess")))),
        Status::Unauthorized
    );
    assert!(!service.authenticated(&session));
}

#[test]
fn put_then_get_returns_the_bytes_and_unknown_ids_are_not_found() {
    let service = service(None);
    let mut session = greeted(&service);
    let ids = put(&service, &mut session, &[b"alpha", b"", b"gamma!"]);
    assert_eq!(ids.len(), 3);
    let unknown = ObjectId(u128::MAX);
    let (items, payload) = get(&service, &mut session, &[ids[2], unknown, ids[0], ids[1]]);
    assert_eq!(
        items,
        [
            GetItem::Found { size: 6 },
            GetItem::NotFound,
            GetItem::Found { size: 5 },
            GetItem::Found { size: 0 },
        ]
    );
    assert_eq!(payload, [b"gamma!".to_vec(), b"alpha".to_vec(), Vec::new()]);
    let stats = stats(&service, &mut session);
    assert_eq!((stats.objects, stats.puts), (3, 3));
    assert_eq!((stats.gets, stats.get_hits), (4, 3));
}

#[test]
fn sinks_are_refused_when_sizes_and_payload_disagree_or_objects_do_not_fit() {
    let service = service(None);
    let mut session = greeted(&service);
    let put = |sizes: Vec<u64>| Request::Put { sizes };
    let cases = [
        (put(vec![3, 4]), 8, Status::BadRequest),
        (put(vec![u64::MAX, 2]), 1, Status::BadRequest),
        (Request::Stats, 1, Status::BadRequest),
        (put(vec![CAPACITY + 1]), CAPACITY + 1, Status::TooLarge),
        (
            put(vec![CAPACITY / 2 + 1; 2]),
            CAPACITY + 2,
            Status::StoreFull,
        ),
    ];
    for (request, len, expected) in cases {
        let refused = service
            .payload_sinks(&mut session, &request, len)
            .expect_err("refused");
        assert_eq!(refused.status, expected, "{request:?}: {refused}");
    }
    let stats = stats(&service, &mut session);
    assert_eq!((stats.objects, stats.store_full), (0, 1));
    assert_eq!(stats.bytes_used, 0, "refused sinks hold no memory");
}

#[test]
fn evicted_objects_are_gone_and_evicting_twice_reports_it() {
    let service = service(None);
    let mut session = greeted(&service);
    let ids = put(&service, &mut session, &[b"one", b"two"]);
    let evict = Request::Evict {
        ids: vec![ids[0], ids[0]],
    };
    assert_eq!(
        ask(&service, &mut session, evict),
        Response::Evict {
            evicted: vec![true, false]
        }
    );
    assert_eq!(
        ask(&service, &mut session, Request::Exists { ids: ids.clone() }),
        Response::Exists {
            present: vec![false, true]
        }
    );
    let (items, _) = get(&service, &mut session, &ids);
    assert_eq!(items, [GetItem::NotFound, GetItem::Found { size: 3 }]);
}

#[test]
fn get_and_evict_hands_each_object_to_one_caller() {
    let service = service(None);
    let mut first = greeted(&service);
    let mut second = greeted(&service);
    let ids = put(&service, &mut first, &[b"once"]);
    let take = || Request::GetAndEvict { ids: ids.clone() };
    let reply = call(&service, &mut first, take(), &[]).expect("no payload");
    assert_eq!(
        reply.response,
        Response::Get {
            items: vec![GetItem::Found { size: 4 }]
        }
    );
    assert_eq!(reply.payload[0].as_ref(), b"once");
    // The server took it out of the store, so it counts as evicted for the others.
    let again = ask(&service, &mut second, take());
    assert_eq!(
        again,
        Response::Get {
            items: vec![GetItem::Evicted]
        }
    );
}

#[test]
fn reserved_keys_are_not_set_until_set_and_set_only_once() {
    let service = service(None);
    let mut session = greeted(&service);
    let Response::NewKeys { ids } = ask(&service, &mut session, Request::NewKeys { count: 2 })
    else {
        panic!("no keys");
    };
    let (items, _) = get(&service, &mut session, &ids);
    assert_eq!(items, [GetItem::NotSet, GetItem::NotSet]);
    let set = |sizes: Vec<u64>| Request::Set {
        ids: vec![ids[0]],
        sizes,
    };
    let refused = service
        .payload_sinks(&mut session, &set(vec![1, 2]), 3)
        .expect_err("one id, two sizes");
    assert_eq!(refused.status, Status::BadRequest);
    let reply = call(&service, &mut session, set(vec![5]), b"later").expect("settable");
    assert_eq!(reply.response, Response::Done);
    let refused = service
        .payload_sinks(&mut session, &set(vec![5]), 5)
        .expect_err("set already");
    assert_eq!(refused.status, Status::AlreadySet, "{refused}");
    let (items, payload) = get(&service, &mut session, &ids);
    assert_eq!(items, [GetItem::Found { size: 5 }, GetItem::NotSet]);
    assert_eq!(payload, [b"later".to_vec()]);
}

#[test]
fn a_waiting_get_is_answered_when_its_key_is_set() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let service = service(None);
    let mut getter = greeted(&service);
    let mut setter = greeted(&service);
    let Response::NewKeys { ids } = ask(&service, &mut setter, Request::NewKeys { count: 1 })
    else {
        panic!("no keys");
    };
    let waiting = Request::Get {
        ids: ids.clone(),
        wait_ms: 3_600_000,
    };
    let Outcome::Deferred(later) = service.handle(&mut getter, waiting, Vec::new()) else {
        panic!("a get of a key not set yet waits");
    };
    let later = runtime.spawn(later);
    let set = Request::Set {
        ids,
        sizes: vec![3],
    };
    let done = call(&service, &mut setter, set, b"now").expect("settable");
    assert_eq!(done.response, Response::Done);
    let reply = runtime.block_on(later).expect("the get ends");
    assert_eq!(
        reply.response,
        Response::Get {
            items: vec![GetItem::Found { size: 3 }]
        }
    );
    assert_eq!(reply.payload[0].as_ref(), b"now");
}

#[test]
fn an_owners_objects_go_when_its_session_closes_or_it_is_released() {
    let service = service(None);
    let mut reader = greeted(&service);
    let owned = |owner: &str, payload: &[u8]| Request::PutWith {
        sizes: vec![payload.len() as u64],
        options: PutOptions {
            owner: Some(owner.into()),
            ..PutOptions::default()
        },
    };
    let mut writer = greeted(&service);
    let put_owned = |session: &mut Session, owner: &str| {
        let reply = call(&service, session, owned(owner, b"tagged"), b"tagged").expect("room");
        let Response::Put { ids } = reply.response else {
            panic!("put answered {:?}", reply.response);
        };
        ids[0]
    };
    let closing = put_owned(&mut writer, "job-a");
    let released = put_owned(&mut reader, "job-b");
    drop(writer);
    let (items, _) = get(&service, &mut reader, &[closing, released]);
    assert_eq!(items, [GetItem::Evicted, GetItem::Found { size: 6 }]);
    let release = Request::ReleaseOwner {
        owner: "job-b".into(),
    };
    assert_eq!(
        ask(&service, &mut reader, release),
        Response::Released { objects: 1 }
    );
    let (items, _) = get(&service, &mut reader, &[released]);
    assert_eq!(items, [GetItem::Evicted]);
    assert!(service.is_empty());
}

#[test]
fn one_sided_gets_need_an_offered_transport() {
    let service = service(None);
    let mut session = greeted(&service);
    let request = Request::UseOneSided {
        transport: "ucx".into(),
        from: 0,
    };
    let Response::Error(e) = ask(&service, &mut session, request) else {
        panic!("a transport the server does not offer was accepted");
    };
    assert_eq!(e.status, Status::BadRequest);
    assert!(e.message.contains("\"ucx\""), "{e}");
}

#[test]
fn connections_are_counted_while_their_sessions_live() {
    let service = service(None);
    let first = greeted(&service);
    let second = open(&service);
    assert_eq!(service.connections(), 2);
    drop(first);
    assert_eq!(service.connections(), 1);
    drop(second);
    assert_eq!(service.connections(), 0);
}

#[test]
fn a_put_into_a_full_store_evicts_the_least_recently_read_under_lru() {
    let service = service_evicting(None, Policy::Lru);
    let mut session = greeted(&service);
    let object = vec![7u8; (CAPACITY / 4) as usize];
    let ids: Vec<ObjectId> = (0..4)
        .map(|_| put(&service, &mut session, &[&object])[0])
        .collect();
    let (items, _) = get(&service, &mut session, &ids[..1]);
    assert_eq!(items, [GetItem::Found { size: CAPACITY / 4 }]);
    let newest = put(&service, &mut session, &[&object])[0];
    let (items, _) = get(&service, &mut session, &[ids[0], ids[1], ids[2], newest]);
    let found = GetItem::Found { size: CAPACITY / 4 };
    assert_eq!(
        items,
        [found, GetItem::Evicted, found, found],
        "the first object was read since its put, the second was not"
    );
}
