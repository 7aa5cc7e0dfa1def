//! No panics on hostile input: identities, PEM/DER parsing, SNI maps, SAN matching.

use isthmus_tls::*;
use proptest::prelude::*;

proptest! {
    #[test]
    fn identity_parse_never_panics_and_round_trips(s in ".{0,80}") {
        if let Ok(id) = Identity::parse(&s) {
            prop_assert_eq!(id.spiffe_uri(), s);
        }
    }

    #[test]
    fn valid_identities_round_trip(td in "[a-z0-9.-]{1,20}", ns in "[a-z0-9-]{1,20}", sa in "[a-z0-9-]{1,20}") {
        let id = Identity::new(&td, ns, sa).unwrap();
        prop_assert_eq!(Identity::parse(&id.spiffe_uri()).unwrap(), id);
    }

    #[test]
    fn pem_and_der_parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = parse_certs(&bytes, "fuzz");
        let _ = parse_private_key(&bytes, "fuzz");
        let _ = parse_crls(&bytes, "fuzz");
        let _ = CertSummary::from_der(&bytes);
        let _ = TrustBundle::from_pem(&bytes, "fuzz");
        let _ = CertStore::from_pem("fuzz", &bytes, &bytes);
        let mut pem = b"-----BEGIN CERTIFICATE-----\n".to_vec();
        pem.extend_from_slice(&bytes);
        pem.extend_from_slice(b"\n-----END CERTIFICATE-----\n");
        let _ = parse_certs(&pem, "fuzz");
    }

    #[test]
    fn sni_lookup_never_panics(names in proptest::collection::vec("[a-z*.]{0,12}", 0..6), q in "[a-zA-Z.*]{0,20}") {
        let mut m = SniMap::new();
        for (i, n) in names.iter().enumerate() {
            m.insert(n, i);
        }
        let _ = m.get(Some(&q));
        let _ = m.get(None);
        let _ = dns_san_matches(&q, &names.concat());
        let _ = server_name(&q);
        let _ = TlsVersion::parse_istio(&q);
    }
}
