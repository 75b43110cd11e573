import BackupStorage
import Foundation
import RecoveryKit
import TestSupport
import XCTest

/// Encryption at rest: AES-256-GCM frames over the compressed stream; the key stays out of the repository.
final class EncryptionTests: XCTestCase {
    func testEncryptedBackupsRestoreWithTheKeyAndTamperingIsDetected() throws {
        let cluster = try PostgresCluster.shared()
        let database = try cluster.createDatabase(prefix: "cipher", seed: "CREATE TABLE secrets AS SELECT g, 'row ' || g AS note FROM generate_series(1, 3000) g")
        let work = TestPaths.temporaryDirectory(prefix: "cipher")
        let repository = work + "/repo"
        let keyFile = work + "/repository.key"
        let material = "k3y-material-" + UUID().uuidString
        try material.write(toFile: keyFile, atomically: true, encoding: .utf8)
        let otherKey = work + "/other.key"
        try ("other-" + UUID().uuidString).write(toFile: otherKey, atomically: true, encoding: .utf8)
        let url = cluster.url(database: database)

        let backup = try TestProcess.tool("dbbackup", ["--database-url", url, "--repo", repository, "--encryption-key-file", keyFile], cluster: cluster)
        XCTAssertEqual(backup.status, 0, backup.standardError)
        let id = backup.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)
        let dump = "\(repository)/backups/\(id)/dump.sql.gz"
        let stored = try Data(contentsOf: URL(fileURLWithPath: dump))
        XCTAssertTrue(stored.starts(with: RepositoryKey.magic), "stored data is encrypted, not gzip")
        XCTAssertNotEqual(try TestProcess.shell("gzip -t '\(dump)'").status, 0)
        for file in FileManager.default.enumerator(atPath: repository)?.allObjects as? [String] ?? [] {
            let text = String(decoding: (FileManager.default.contents(atPath: repository + "/" + file) ?? Data()), as: UTF8.self)
            XCTAssertFalse(text.contains(material), "the key is never stored in the repository (\(file))")
        }
        let manifest = try BackupManifest.decode(try Data(contentsOf: URL(fileURLWithPath: "\(repository)/backups/\(id)/manifest.json")), source: id)
        XCTAssertEqual(manifest.files[0].encryptionKeyFingerprint, try RepositoryKey.load(file: keyFile)?.fingerprint)

        XCTAssertEqual(try TestProcess.tool("dbverify", ["--files", id, "--repo", repository, "--encryption-key-file", keyFile]).status, 0)
        let target = "decrypted_\(UInt32.random(in: 0...UInt32.max))"
        let restore = try TestProcess.tool("dbrestore", [id, "--yes", "--repo", repository, "--encryption-key-file", keyFile,
                                                         "--database-url", cluster.url(database: target)], cluster: cluster)
        XCTAssertEqual(restore.status, 0, restore.standardError)
        XCTAssertEqual(try cluster.rowCounts(database: target), ["public.secrets": 3000])

        let noKey = try TestProcess.tool("dbrestore", [id, "--yes", "--repo", repository, "--database-url", cluster.url(database: target + "x")], cluster: cluster)
        XCTAssertEqual(noKey.status, ExitStatus.configuration.rawValue, noKey.standardError)
        XCTAssertTrue(noKey.standardError.contains("is encrypted") && noKey.standardError.contains("--encryption-key-file"), noKey.standardError)
        let wrongKey = try TestProcess.tool("dbrestore", [id, "--yes", "--repo", repository, "--encryption-key-file", otherKey,
                                                          "--database-url", cluster.url(database: target + "x")], cluster: cluster)
        XCTAssertEqual(wrongKey.status, ExitStatus.configuration.rawValue, wrongKey.standardError)
        XCTAssertTrue(wrongKey.standardError.contains("another key"), wrongKey.standardError)

        // Tampering that also fixes up the manifest's sha256 and size is still caught by the cipher.
        var tampered = stored
        tampered[tampered.count / 2] ^= 0x01
        try tampered.write(to: URL(fileURLWithPath: dump))
        var forged = manifest
        var digest = StreamingDigest()
        tampered.withUnsafeBytes { digest.update($0) }
        forged.files[0].sha256 = digest.hexDigest()
        try forged.encoded().write(to: URL(fileURLWithPath: "\(repository)/backups/\(id)/manifest.json"))
        let attacked = try TestProcess.tool("dbrestore", [id, "--yes", "--repo", repository, "--encryption-key-file", keyFile,
                                                          "--database-url", cluster.url(database: target + "y")], cluster: cluster)
        XCTAssertEqual(attacked.status, ExitStatus.backupCorrupt.rawValue, attacked.standardError)
        XCTAssertTrue(attacked.standardError.contains("fails authentication"), attacked.standardError)
        XCTAssertFalse(try cluster.databaseExists(target + "y"))
    }

    /// Database settings and comments can hold secrets (`app.jwt_secret`, as PostgREST recommends): in an
    /// encrypted repository they are sealed with the key, never in the manifest's clear text, and still restored.
    func testDatabaseSettingsAreSealedInAnEncryptedRepositoryAndRestored() throws {
        let cluster = try PostgresCluster.shared()
        let database = try cluster.createDatabase(prefix: "sealed")
        let secret = "jwt-" + UUID().uuidString, comment = "comment-" + UUID().uuidString
        let admin = try cluster.connect()
        try admin.execute(script: """
            ALTER DATABASE \(database) SET app.jwt_secret = '\(secret)';
            COMMENT ON DATABASE \(database) IS '\(comment)';
            """)
        try cluster.connect(database: database).execute(script: "CREATE TABLE t AS SELECT g FROM generate_series(1, 10) g")
        let work = TestPaths.temporaryDirectory(prefix: "sealed")
        let keyFile = work + "/repository.key"
        try ("sealed-key-material-" + UUID().uuidString).write(toFile: keyFile, atomically: true, encoding: .utf8)
        let common = ["--database-url", cluster.url(database: database), "--repo", work + "/repo", "--encryption-key-file", keyFile]
        let backup = try TestProcess.tool("dbbackup", common, cluster: cluster)
        XCTAssertEqual(backup.status, 0, backup.standardError)
        let id = backup.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)
        let manifestText = try String(contentsOfFile: "\(work)/repo/backups/\(id)/manifest.json", encoding: .utf8)
        XCTAssertFalse(manifestText.contains(secret), "a database setting's value is not in the manifest's clear text")
        XCTAssertFalse(manifestText.contains(comment), "nor the database comment")
        XCTAssertTrue(manifestText.contains("\"sealed_database_properties\""), manifestText)

        try admin.execute(script: "ALTER DATABASE \(database) RESET ALL; COMMENT ON DATABASE \(database) IS NULL")
        let restore = try TestProcess.tool("dbrestore", common + ["latest", "--yes"], cluster: cluster)
        XCTAssertEqual(restore.status, 0, restore.standardError)
        XCTAssertFalse(restore.standardError.contains(secret) || restore.standardOutput.contains(secret), "never printed")
        XCTAssertEqual(try cluster.scalar("SELECT current_setting('app.jwt_secret')", database: database), secret)
        XCTAssertEqual(try cluster.scalar("SELECT pg_catalog.shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = current_database()",
                                          database: database), comment)
    }

    func testEncryptedWALRoundTrips() throws {
        let work = TestPaths.temporaryDirectory(prefix: "cipherwal")
        let keyFile = work + "/k"
        try "wal-key-material-0123456789".write(toFile: keyFile, atomically: true, encoding: .utf8)
        let segment = work + "/000000010000000000000007"
        let bytes = Data((0..<1_048_576).map { UInt8(truncatingIfNeeded: $0 &* 31) })
        try bytes.write(to: URL(fileURLWithPath: segment))
        let repository = work + "/repo"
        XCTAssertEqual(try TestProcess.tool("dbbackup", ["wal-push", segment, "--repo", repository, "--encryption-key-file", keyFile]).status, 0)
        let stored = try Data(contentsOf: URL(fileURLWithPath: repository + "/wal/00000001/000000010000000000000007.gz"))
        XCTAssertTrue(stored.starts(with: RepositoryKey.magic))
        XCTAssertEqual(try TestProcess.tool("dbbackup", ["wal-push", segment, "--repo", repository, "--encryption-key-file", keyFile]).status, 0,
                       "pushing the same segment again succeeds")
        let fetched = try TestProcess.tool("dbrestore", ["wal-fetch", "000000010000000000000007", work + "/out", "--repo", repository,
                                                         "--encryption-key-file", keyFile])
        XCTAssertEqual(fetched.status, 0, fetched.standardError)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: work + "/out")), bytes)
        let withoutKey = try TestProcess.tool("dbrestore", ["wal-fetch", "000000010000000000000007", work + "/out2", "--repo", repository])
        XCTAssertEqual(withoutKey.status, ExitStatus.walFetchFailed.rawValue, "a missing key must stop recovery, not end it")
    }

    /// `wal-push --async`: the background pusher's check of the repository's encryption runs while
    /// it compresses; when it fails, the call reports the check's own error (not a timeout naming
    /// the pusher's log), nothing is stored, and the pusher exits so that the next call, with
    /// `--allow-mixed-encryption` added, starts one with its options.
    func testAsyncPushIntoAnEncryptedRepositoryWithoutTheKeyFailsWithTheReason() throws {
        let work = TestPaths.temporaryDirectory(prefix: "cipherasync")
        let keyFile = work + "/k"
        try "async-key-material-0123456789".write(toFile: keyFile, atomically: true, encoding: .utf8)
        let repository = work + "/repo", spool = work + "/spool"
        try FileManager.default.createDirectory(atPath: work + "/pg_wal/archive_status", withIntermediateDirectories: true)
        for index in 1...2 {
            try Data((0..<1_048_576).map { UInt8(truncatingIfNeeded: $0 &* index) }).write(to: URL(fileURLWithPath: work + "/pg_wal/00000001000000000000000\(index)"))
        }
        XCTAssertEqual(try TestProcess.tool("dbbackup", ["wal-push", work + "/pg_wal/000000010000000000000001", "--repo", repository,
                                                         "--encryption-key-file", keyFile]).status, 0)
        let plaintext = ["wal-push", work + "/pg_wal/000000010000000000000002", "--async", "--spool", spool, "--repo", repository, "--timeout", "60"]
        let refused = try TestProcess.tool("dbbackup", plaintext)
        XCTAssertEqual(refused.status, ExitStatus.repositoryError.rawValue, refused.standardError)
        XCTAssertTrue(refused.standardError.contains("holds encrypted backups; refusing to store plaintext"), refused.standardError)
        XCTAssertFalse(refused.standardError.contains("within 60 s"), "the reason, not a timeout: \(refused.standardError)")
        XCTAssertFalse(FileManager.default.fileExists(atPath: repository + "/wal/00000001/000000010000000000000002.gz"), "nothing stored")
        let allowed = try TestProcess.tool("dbbackup", plaintext + ["--allow-mixed-encryption"])
        XCTAssertEqual(allowed.status, 0, allowed.standardError)
        XCTAssertTrue(FileManager.default.fileExists(atPath: repository + "/wal/00000001/000000010000000000000002.gz"))
    }

    /// Issue 16 E8: a repository that holds encrypted backups refuses plaintext (backup and
    /// wal-push) without --allow-mixed-encryption, and a plaintext one refuses encrypted data.
    func testEncryptedRepositoryRefusesPlaintextAndTheReverse() throws {
        let cluster = try PostgresCluster.shared()
        let database = try cluster.createDatabase(prefix: "mixed", seed: "CREATE TABLE t AS SELECT generate_series(1, 10) g")
        let work = TestPaths.temporaryDirectory(prefix: "mixed")
        let keyFile = work + "/k"
        try "mixed-key-material-0123456789".write(toFile: keyFile, atomically: true, encoding: .utf8)
        let otherKey = work + "/other"
        try "another-key-material-987654321".write(toFile: otherKey, atomically: true, encoding: .utf8)
        let segment = work + "/000000010000000000000003"
        try Data((0..<1_048_576).map { UInt8(truncatingIfNeeded: $0 &* 7) }).write(to: URL(fileURLWithPath: segment))
        let url = cluster.url(database: database)

        let encrypted = work + "/encrypted"
        XCTAssertEqual(try TestProcess.tool("dbbackup", ["--database-url", url, "--repo", encrypted, "--encryption-key-file", keyFile], cluster: cluster).status, 0)
        for (arguments, what) in [(["--database-url", url, "--repo", encrypted], "backup"), (["wal-push", segment, "--repo", encrypted], "wal-push"),
                                  (["--database-url", url, "--repo", encrypted, "--encryption-key-file", otherKey], "backup with another key")] {
            let refused = try TestProcess.tool("dbbackup", arguments, cluster: cluster)
            XCTAssertEqual(refused.status, ExitStatus.usage.rawValue, "\(what): \(refused.standardError)")
            XCTAssertTrue(refused.standardError.contains("--allow-mixed-encryption"), refused.standardError)
        }
        // dbmigrate down's pre-downgrade backup too: refused before anything is reverted, dry run included.
        let migrate = try oneMigrationApplied(in: work, url: url, cluster: cluster)
        for extra in [["--dry-run"], ["--yes"]] {
            let down = try TestProcess.tool("dbmigrate", ["down", "--to", "0", "--repo", encrypted] + extra + migrate, cluster: cluster)
            XCTAssertEqual(down.status, ExitStatus.usage.rawValue, "down \(extra): \(down.standardError)")
            XCTAssertTrue(down.standardError.contains("--allow-mixed-encryption"), down.standardError)
        }
        XCTAssertEqual(try cluster.scalar("SELECT to_regclass('m') IS NOT NULL", database: database), "t", "nothing was reverted")
        XCTAssertEqual(try Catalog(store: try LocalStore(root: encrypted, create: false)).entries().count, 1, "a refused backup stored nothing")
        XCTAssertFalse(FileManager.default.fileExists(atPath: encrypted + "/wal"), "a refused wal-push stored nothing")
        XCTAssertEqual(try TestProcess.tool("dbbackup", ["wal-push", segment, "--repo", encrypted, "--allow-mixed-encryption"]).status, 0)

        // Plaintext repositories, including one written before the record existed, refuse encrypted data.
        let plain = work + "/plain"
        XCTAssertEqual(try TestProcess.tool("dbbackup", ["--database-url", url, "--repo", plain], cluster: cluster).status, 0)
        try FileManager.default.removeItem(atPath: plain + "/" + RepositoryEncryption.key)
        let mixed = try TestProcess.tool("dbbackup", ["wal-push", segment, "--repo", plain, "--encryption-key-file", keyFile])
        XCTAssertEqual(mixed.status, ExitStatus.usage.rawValue, mixed.standardError)
        XCTAssertTrue(mixed.standardError.contains("holds unencrypted backups"), mixed.standardError)
        XCTAssertEqual(try TestProcess.tool("dbbackup", ["--database-url", url, "--repo", plain], cluster: cluster).status, 0)
    }

    /// A backup that never stored anything (the server refused the password) records no encryption
    /// mode, so the repository's first real backup decides it; a record such a run left behind in
    /// an earlier version (a repository that holds nothing) does not refuse an encrypted first
    /// backup. Logical, physical and dbmigrate's dry run; local and S3.
    func testARunThatStoredNothingDoesNotDecideTheRepositorysEncryption() throws {
        let cluster = try PostgresCluster.shared()
        let s3 = try S3Server.shared()
        let database = try cluster.createDatabase(prefix: "firstenc", seed: "CREATE TABLE t AS SELECT generate_series(1, 10) g")
        let work = TestPaths.temporaryDirectory(prefix: "firstenc")
        let keyFile = work + "/k"
        try "first-backup-key-material-0123456789".write(toFile: keyFile, atomically: true, encoding: .utf8)
        let url = cluster.url(database: database)
        let bucket = try s3.createBucket()
        let s3Store = S3Store(configuration: try S3Settings.configuration(bucket: bucket, environment: s3.environment()), prefix: "firstenc")
        let stale = Data(#"{"encrypted":false}"#.utf8)

        for (label, repository, hasRecord, plant) in [
            ("local", work + "/local", { FileManager.default.fileExists(atPath: work + "/local/" + RepositoryEncryption.key) },
             { try FileManager.default.createDirectory(atPath: work + "/local", withIntermediateDirectories: true)
               try stale.write(to: URL(fileURLWithPath: work + "/local/" + RepositoryEncryption.key)) }),
            ("s3", "s3://\(bucket)/firstenc", { (try? s3Store.read(RepositoryEncryption.key)) != nil },
             { try s3Store.write(RepositoryEncryption.key, contents: stale) }),
        ] as [(String, String, () -> Bool, () throws -> Void)] {
            for physical in [false, true] {
                let wrong = try TestProcess.tool("dbbackup", (physical ? ["--physical"] : []) + ["--database-url", url, "--repo", repository],
                                                 cluster: cluster, environment: s3.environment().merging(["PGPASSWORD": "wrong"]) { _, new in new })
                XCTAssertEqual(wrong.status, ExitStatus.databaseUnavailable.rawValue, "\(label): \(wrong.standardError)")
                XCTAssertFalse(hasRecord(), "\(label) physical \(physical): a backup that stored nothing records nothing")
            }
            // An earlier version's leftover: says unencrypted, the repository holds nothing.
            try plant()
            let encrypted = try TestProcess.tool("dbbackup", ["--database-url", url, "--repo", repository, "--encryption-key-file", keyFile],
                                                 cluster: cluster, environment: s3.environment())
            XCTAssertEqual(encrypted.status, 0, "\(label): \(encrypted.standardError)")
            XCTAssertTrue(hasRecord(), "\(label): the stored backup's mode is recorded")
            // From now on the repository is encrypted: plaintext is refused, the key is accepted.
            let plain = try TestProcess.tool("dbbackup", ["--database-url", url, "--repo", repository], cluster: cluster, environment: s3.environment())
            XCTAssertEqual(plain.status, ExitStatus.usage.rawValue, "\(label): \(plain.standardError)")
            XCTAssertTrue(plain.standardError.contains("holds encrypted backups"), plain.standardError)
            let second = try TestProcess.tool("dbbackup", ["--database-url", url, "--repo", repository, "--encryption-key-file", keyFile],
                                              cluster: cluster, environment: s3.environment())
            XCTAssertEqual(second.status, 0, "\(label): \(second.standardError)")
        }

        // dbmigrate down --dry-run checks the pre-downgrade backup's repository and records nothing.
        let migrate = try oneMigrationApplied(in: work, url: url, cluster: cluster)
        let fresh = work + "/fresh"
        let down = try TestProcess.tool("dbmigrate", ["down", "--to", "0", "--repo", fresh, "--dry-run"] + migrate, cluster: cluster)
        XCTAssertEqual(down.status, 0, down.standardError)
        XCTAssertFalse(FileManager.default.fileExists(atPath: fresh + "/" + RepositoryEncryption.key), "a dry run records nothing")

        // A wal-push that stores nothing (the file is not there) records nothing either.
        let push = try TestProcess.tool("dbbackup", ["wal-push", work + "/000000010000000000000009", "--repo", fresh])
        XCTAssertNotEqual(push.status, 0, push.standardError)
        XCTAssertFalse(FileManager.default.fileExists(atPath: fresh + "/" + RepositoryEncryption.key), "a failed wal-push records nothing")
    }

    /// A migrations directory under `work` with one migration (table m), applied to `url`; the
    /// arguments that point dbmigrate at both.
    private func oneMigrationApplied(in work: String, url: String, cluster: PostgresCluster) throws -> [String] {
        let migrations = work + "/migrations"
        try FileManager.default.createDirectory(atPath: migrations, withIntermediateDirectories: true)
        try "CREATE TABLE m (x int);".write(toFile: migrations + "/0001_m.up.sql", atomically: true, encoding: .utf8)
        try "DROP TABLE m;".write(toFile: migrations + "/0001_m.down.sql", atomically: true, encoding: .utf8)
        let migrate = ["--database-url", url, "--dir", migrations]
        XCTAssertEqual(try TestProcess.tool("dbmigrate", ["up"] + migrate, cluster: cluster).status, 0)
        return migrate
    }
}
