import Crypto
import Foundation

/// A fingerprint of a database's schema as `pg_dump --schema-only` writes it: one sha256 per
/// object pg_dump names (`-- Name: …; Type: …; Schema: …` headers), and one over all of them.
///
/// Recorded in a logical backup's manifest (taken in the dump's own snapshot) and compared with the
/// restored scratch database before the swap, and with a live database by `dbverify --schema`.
/// The text is normalised by `SchemaNormalizer` first, so that only what pg_dump writes differently
/// for the same schema is left out (the `\restrict` key, comments, blank lines).
public struct SchemaFingerprint: Codable, Equatable, Sendable {
    /// One object of the dump: what pg_dump's header names, and the sha256 of its normalised text.
    public struct Object: Codable, Equatable, Hashable, Sendable {
        /// pg_dump's object type: `TABLE`, `INDEX`, `FK CONSTRAINT`, `ACL`, `COMMENT`, … (`SETTINGS` for
        /// the statements before the first object).
        public var type: String
        /// The schema, or `-` for objects outside schemas.
        public var schema: String
        /// The name as pg_dump writes it, e.g. `users`, `users users_pkey`, `f(integer)`, `TABLE users`.
        public var name: String
        /// sha256 of the object's normalised text (its header line included: owner and tablespace live there).
        public var sha256: String

        /// `index users_email in schema public`, as printed in reports.
        public var label: String {
            type.lowercased() + " " + name + (schema == "-" ? "" : " in schema \(schema)")
        }
    }

    /// How an object differs between the fingerprint expected and the one found.
    public enum Change: String, Codable, Sendable {
        /// In the backup, not in the database.
        case missing
        /// In the database, not in the backup.
        case extra
        /// In both, with different definitions.
        case changed
    }

    /// One differing object.
    public struct Difference: Codable, Equatable, Sendable {
        public var change: Change
        public var type: String
        public var schema: String
        public var name: String

        /// `index users_email in schema public is missing`, as printed in reports.
        public var description: String {
            if type == SchemaFingerprint.settingsType {
                return "the dump's session settings (client_encoding, standard_conforming_strings) " + (change == .changed ? "differ" : "are \(change.rawValue)")
            }
            let object = Object(type: type, schema: schema, name: name, sha256: "").label
            switch change {
            case .missing: return "\(object) is missing"
            case .extra: return "\(object) is not in the backup"
            case .changed: return "\(object) differs"
            }
        }
    }

    /// Type of the pseudo-object holding the statements before pg_dump's first object header.
    public static let settingsType = "SETTINGS"

    /// sha256 over the sorted objects: equal exactly when the objects are (their order in the dump
    /// does not count, since pg_dump breaks some ties by OID).
    public var sha256: String
    /// Version of the pg_dump that wrote the text (`-- Dumped by pg_dump version …`), if it said.
    public var pgDumpVersion: String?
    /// Version of the server it dumped (`-- Dumped from database version …`), if it said.
    public var serverVersion: String?
    public var objects: [Object]

    /// Builds a fingerprint from its objects (the overall sha256 is derived from them).
    public init(objects: [Object], pgDumpVersion: String? = nil, serverVersion: String? = nil) {
        self.objects = objects
        self.pgDumpVersion = pgDumpVersion
        self.serverVersion = serverVersion
        var hasher = SHA256()
        for object in objects.sorted(by: Self.order) {
            // NUL separators: names cannot contain NUL, so the encoding is unambiguous.
            hasher.update(data: Data("\(object.type)\u{0}\(object.schema)\u{0}\(object.name)\u{0}\(object.sha256)\n".utf8))
        }
        sha256 = hasher.finalize().map { String(format: "%02x", $0) }.joined()
    }

    /// Fingerprints a whole `pg_dump --schema-only` text (tests and small inputs; captures stream
    /// through `SchemaNormalizer` instead).
    public static func of(dump: String) -> SchemaFingerprint {
        var normalizer = SchemaNormalizer()
        Array(dump.utf8).withUnsafeBytes { normalizer.write($0) }
        return normalizer.finish()
    }

    /// What differs between this (expected) fingerprint and `actual`: objects missing, extra, or
    /// changed, by type, schema and name; empty when they are equal.
    ///
    /// Objects pg_dump names alike (default privileges of two roles, say) are matched by their
    /// sha256 first, so only the ones left unmatched count.
    public func differences(from actual: SchemaFingerprint) -> [Difference] {
        if actual.sha256 == sha256 { return [] }
        struct Key: Hashable { var type: String, schema: String, name: String }
        func grouped(_ objects: [Object]) -> [Key: [String]] {
            Dictionary(grouping: objects, by: { Key(type: $0.type, schema: $0.schema, name: $0.name) }).mapValues { $0.map(\.sha256) }
        }
        let expected = grouped(objects), found = grouped(actual.objects)
        var differences: [Difference] = []
        for key in Set(expected.keys).union(found.keys) {
            var want = expected[key] ?? [], have = found[key] ?? []
            for digest in want where have.contains(digest) {
                if let index = have.firstIndex(of: digest) { have.remove(at: index) }
                if let index = want.firstIndex(of: digest) { want.remove(at: index) }
            }
            let changed = min(want.count, have.count)
            let counts: [(Change, Int)] = [(.changed, changed), (.missing, want.count - changed), (.extra, have.count - changed)]
            for (change, count) in counts where count > 0 {
                differences += Array(repeating: Difference(change: change, type: key.type, schema: key.schema, name: key.name), count: count)
            }
        }
        return differences.sorted { ($0.schema, $0.type, $0.name, $0.change.rawValue) < ($1.schema, $1.type, $1.name, $1.change.rawValue) }
    }

    private static func order(_ a: Object, _ b: Object) -> Bool {
        (a.type, a.schema, a.name, a.sha256) < (b.type, b.schema, b.name, b.sha256)
    }
}
