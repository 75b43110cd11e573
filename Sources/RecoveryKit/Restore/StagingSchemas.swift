import BackupStorage
import Foundation
import PostgresClient

/// The staging schema of `dbrestore --table … --replace` is committed in the live database before
/// the swap (pg_dump, which checks its definition, sees only committed objects), with foreign keys
/// into live tables. A run killed then (SIGKILL, a lost machine) leaves it behind, and its keys hold
/// the live tables' rows. Its comment marks it as ours while it lives, naming the run (process and
/// host, as a repository lock does); the next selective restore into that database drops the ones
/// whose run is gone from this host, and names the others with the statement that drops them.
enum StagingSchemas {
    private static let prefix = "dbrecovery: staging for --replace of backup "

    /// The comment of a staging schema: the backup and the run (`LockHolder`, JSON).
    static func comment(backup: String) throws -> String {
        let holder = LockHolder(command: "dbrestore --replace")
        return prefix + backup + ", run " + String(decoding: try JSONEncoder().encode(holder), as: UTF8.self)
    }

    /// Drops the staging schemas of runs that are gone from this host, each in its own statement
    /// (committed at once: a later failure of this run does not bring them back); notes each on the
    /// timeline, and the ones it may not drop (a run still going, or on another host) with the
    /// statement that drops them.
    ///
    /// - Throws: `PostgresError` when the catalogue cannot be read; a drop that fails is noted, not thrown.
    static func dropLeftovers(on connection: PostgresConnection, timeline: Timeline) throws {
        let rows = try connection.query("""
            SELECT n.nspname, pg_catalog.obj_description(n.oid, 'pg_namespace') FROM pg_catalog.pg_namespace n
            WHERE pg_catalog.starts_with(pg_catalog.obj_description(n.oid, 'pg_namespace'), $1) ORDER BY 1
            """, [prefix]).rows
        for row in rows {
            // Named as `--replace` names its staging schema; a comment alone (anyone may write one) is not enough.
            guard let schema = row[0], let comment = row[1], let start = comment.range(of: ", run "),
                  schema.wholeMatch(of: /restored_[0-9]{8}_[0-9]{6}/) != nil else { continue }
            let drop = "DROP SCHEMA \(QualifiedNames.quote(schema)) CASCADE"
            // A staged copy has nothing outside it that depends on it (its own keys point out, not in): a
            // view or a key elsewhere on its tables means someone uses it, and CASCADE would take theirs.
            let users = try connection.query("""
                SELECT DISTINCT v.oid::regclass::text FROM pg_catalog.pg_depend d
                JOIN pg_catalog.pg_rewrite r ON d.classid = 'pg_catalog.pg_rewrite'::regclass AND r.oid = d.objid
                JOIN pg_catalog.pg_class v ON v.oid = r.ev_class
                JOIN pg_catalog.pg_class t ON d.refclassid = 'pg_catalog.pg_class'::regclass AND t.oid = d.refobjid
                WHERE t.relnamespace = $1::regnamespace AND v.relnamespace <> $1::regnamespace
                UNION
                SELECT DISTINCT c.conrelid::regclass::text FROM pg_catalog.pg_constraint c JOIN pg_catalog.pg_class t ON t.oid = c.confrelid
                WHERE c.contype = 'f' AND t.relnamespace = $1::regnamespace AND c.connamespace <> $1::regnamespace
                """, [QualifiedNames.quote(schema)]).rows.compactMap { $0[0] ?? nil }
            guard users.isEmpty else {
                timeline.note("staged copy \(schema) of another --replace", outcome: "warning: left alone: \(users.joined(separator: ", ")) depend on it")
                continue
            }
            guard let holder = try? JSONDecoder().decode(LockHolder.self, from: Data(comment[start.upperBound...].utf8)),
                  ProcessLiveness.isGone(holder) else {
                timeline.note("staged copy \(schema) of another --replace", outcome: "warning: left alone (its run may still be going, or ran on another host); "
                                                                                      + "once it is over: \(drop)")
                continue
            }
            do {
                try connection.execute(script: drop)
                timeline.note("drop \(schema), the staged copy of a --replace killed before it ended (\(holder))")
            } catch {
                timeline.note("drop \(schema), the staged copy of a killed --replace", outcome: "failed: \(RecoveryError.classify(error).message); drop it by hand: \(drop)")
            }
        }
    }
}
