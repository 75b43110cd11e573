@testable import BackupStorage
import Foundation
import UTCTime
import XCTest

final class S3SettingsTests: XCTestCase {
    func testEnvironmentCredentialsRegionEndpointAndPartSize() throws {
        let configuration = try S3Settings.configuration(bucket: "acme", environment: [
            "AWS_ACCESS_KEY_ID": "AKID", "AWS_SECRET_ACCESS_KEY": "secret", "AWS_SESSION_TOKEN": "token",
            "AWS_REGION": "eu-central-1", "AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "DBRECOVERY_S3_PART_SIZE_MB": "8",
            "DBRECOVERY_S3_SSE": "aws:kms", "DBRECOVERY_S3_KMS_KEY_ID": "key-1",
        ])
        XCTAssertEqual(try configuration.credentials.current(), AWSCredentials(accessKeyID: "AKID", secretAccessKey: "secret", sessionToken: "token"))
        XCTAssertEqual(configuration.region, "eu-central-1")
        XCTAssertEqual(configuration.endpoint?.absoluteString, "http://127.0.0.1:9000")
        XCTAssertTrue(configuration.pathStyle)
        XCTAssertEqual(configuration.partSize, 8 * 1024 * 1024)
        XCTAssertEqual(configuration.serverSideEncryption, "aws:kms")
    }

    func testCredentialsFileProfiles() throws {
        let path = NSTemporaryDirectory() + "credentials-\(UUID().uuidString)"
        addTeardownBlock { try? FileManager.default.removeItem(atPath: path) }
        try """
            [default]
            aws_access_key_id = DEFAULTKEY
            aws_secret_access_key = defaultsecret

            [backup]
            aws_access_key_id=BACKUPKEY
            aws_secret_access_key=backup/secret+x
            aws_session_token = tok
            """.write(toFile: path, atomically: true, encoding: .utf8)
        let chosen = try S3Settings.configuration(bucket: "acme", environment: ["AWS_SHARED_CREDENTIALS_FILE": path, "AWS_PROFILE": "backup"])
        XCTAssertEqual(try chosen.credentials.current(), AWSCredentials(accessKeyID: "BACKUPKEY", secretAccessKey: "backup/secret+x", sessionToken: "tok"))
        let fallback = try S3Settings.configuration(bucket: "acme", environment: ["AWS_SHARED_CREDENTIALS_FILE": path])
        XCTAssertEqual(try fallback.credentials.current().accessKeyID, "DEFAULTKEY")
        XCTAssertFalse(chosen.pathStyle, "AWS itself: virtual-hosted")
    }

    func testBadValuesAreRefusedWithTheFix() {
        let base = ["AWS_ACCESS_KEY_ID": "A", "AWS_SECRET_ACCESS_KEY": "B"]
        for (name, value) in [("DBRECOVERY_S3_PART_SIZE_MB", "4"), ("DBRECOVERY_S3_SSE", "BOGUS"), ("AWS_ENDPOINT_URL_S3", "ftp://x")] {
            XCTAssertThrowsError(try S3Settings.configuration(bucket: "acme", environment: base.merging([name: value]) { $1 }), name)
        }
        XCTAssertThrowsError(try S3Settings.configuration(bucket: "acme", environment: ["AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
                                                                                        "AWS_EC2_METADATA_DISABLED": "true"])) { error in
            XCTAssertTrue((error as? StorageError)?.hint?.contains("AWS_ACCESS_KEY_ID") ?? false)
        }
    }

    func testPathStyleAndVirtualHostedAddresses() throws {
        let credentials = AWSCredentialSource(fixed: AWSCredentials(accessKeyID: "A", secretAccessKey: "B"))
        let aws = S3Client(S3Configuration(bucket: "acme", region: "eu-west-1", credentials: credentials))
        let (url, host, path) = try aws.address(key: "prod/backups/a b+c", query: [("partNumber", "2"), ("uploadId", "x/y")])
        XCTAssertEqual(host, "acme.s3.eu-west-1.amazonaws.com")
        XCTAssertEqual(path, "/prod/backups/a%20b%2Bc")
        XCTAssertEqual(url.absoluteString, "https://acme.s3.eu-west-1.amazonaws.com/prod/backups/a%20b%2Bc?partNumber=2&uploadId=x%2Fy")

        let local = S3Client(S3Configuration(bucket: "acme", endpoint: URL(string: "http://127.0.0.1:9000"), credentials: credentials))
        let (localURL, localHost, localPath) = try local.address(key: "k", query: [("uploads", "")])
        XCTAssertEqual(localHost, "127.0.0.1:9000")
        XCTAssertEqual(localPath, "/acme/k")
        XCTAssertEqual(localURL.absoluteString, "http://127.0.0.1:9000/acme/k?uploads")
    }

    /// Attack item 13: a timeout or attempt count that is not a plain number in range is refused naming the
    /// variable, not silently replaced by the default (or accepted as 0.001 s, which times every request out).
    func testMalformedOrTooSmallTimeoutsAttemptsAndSpeedFloorsAreRefused() throws {
        let base = ["AWS_ACCESS_KEY_ID": "A", "AWS_SECRET_ACCESS_KEY": "B"]
        for (name, value) in [("DBRECOVERY_S3_TIMEOUT_SECONDS", "30s"), ("DBRECOVERY_S3_TIMEOUT_SECONDS", "0.001"), ("DBRECOVERY_S3_TIMEOUT_SECONDS", "0"),
                              ("DBRECOVERY_S3_TIMEOUT_SECONDS", "nan"), ("DBRECOVERY_S3_TIMEOUT_SECONDS", "7200"),
                              ("DBRECOVERY_S3_MAX_ATTEMPTS", "three"), ("DBRECOVERY_S3_MAX_ATTEMPTS", "2.5"), ("DBRECOVERY_S3_MAX_ATTEMPTS", "0"),
                              ("DBRECOVERY_S3_LOW_SPEED_LIMIT", "1KiB"), ("DBRECOVERY_S3_LOW_SPEED_LIMIT", "-1")] {
            XCTAssertThrowsError(try S3Settings.configuration(bucket: "acme", environment: base.merging([name: value]) { $1 }), "\(name)=\(value)") { error in
                let storage = error as? StorageError
                XCTAssertEqual(storage?.kind, .invalidLocation)
                XCTAssertTrue(storage?.message.contains("\(name)=\(value)") == true, "\(error)")
                XCTAssertTrue(storage?.hint?.contains("plain number") == true, "\(error)")
            }
        }
        let tuned = try S3Settings.configuration(bucket: "acme", environment: base.merging([
            "DBRECOVERY_S3_TIMEOUT_SECONDS": "1.5", "DBRECOVERY_S3_MAX_ATTEMPTS": "3", "DBRECOVERY_S3_LOW_SPEED_LIMIT": "0"]) { $1 })
        XCTAssertEqual(tuned.requestTimeout, 1.5)
        XCTAssertEqual(tuned.maxAttempts, 3)
        XCTAssertEqual(tuned.lowSpeedLimit, 0)
        let defaults = try S3Settings.configuration(bucket: "acme", environment: base)
        XCTAssertEqual(defaults.requestTimeout, 60)
        XCTAssertEqual(defaults.maxAttempts, 8)
        XCTAssertEqual(defaults.lowSpeedLimit, 1024)
        XCTAssertNil(defaults.caBundle)

        let shown = Dictionary(uniqueKeysWithValues: S3Settings.tunables(environment: ["DBRECOVERY_S3_TIMEOUT_SECONDS": "20"]).map { ($0.name, $0) })
        XCTAssertEqual(shown["DBRECOVERY_S3_TIMEOUT_SECONDS"]?.value, "20")
        XCTAssertEqual(shown["DBRECOVERY_S3_TIMEOUT_SECONDS"]?.source, "environment DBRECOVERY_S3_TIMEOUT_SECONDS")
        XCTAssertEqual(shown["DBRECOVERY_S3_MAX_ATTEMPTS"]?.value, "8")
        XCTAssertEqual(shown["DBRECOVERY_S3_MAX_ATTEMPTS"]?.source, "default")
    }

    /// Attack items 8 and 12: an endpoint's path goes before every request's path (and into what is
    /// signed); an IPv6 literal keeps its brackets; a query or a user name in the endpoint is refused.
    func testEndpointPathsAndIPv6LiteralsMakeTheAddress() throws {
        let credentials = AWSCredentialSource(fixed: AWSCredentials(accessKeyID: "A", secretAccessKey: "B"))
        let gateway = S3Client(S3Configuration(bucket: "acme", endpoint: URL(string: "http://gw.example:8080/gateway/s3/"), credentials: credentials))
        let (url, host, path) = try gateway.address(key: "app/x y", query: [("uploads", "")])
        XCTAssertEqual(host, "gw.example:8080")
        XCTAssertEqual(path, "/gateway/s3/acme/app/x%20y")
        XCTAssertEqual(url.absoluteString, "http://gw.example:8080/gateway/s3/acme/app/x%20y?uploads")
        let (_, _, listing) = try gateway.address(key: nil, query: [("list-type", "2")])
        XCTAssertEqual(listing, "/gateway/s3/acme")

        let six = S3Client(S3Configuration(bucket: "acme", endpoint: URL(string: "http://[::1]:9000"), credentials: credentials))
        let (sixURL, sixHost, _) = try six.address(key: "k", query: [])
        XCTAssertEqual(sixHost, "[::1]:9000")
        XCTAssertEqual(sixURL.absoluteString, "http://[::1]:9000/acme/k")

        let base = ["AWS_ACCESS_KEY_ID": "A", "AWS_SECRET_ACCESS_KEY": "B"]
        for endpoint in ["http://host:1/s3?x=1", "http://user:pw@host:1", "http://host:1/#f"] {
            XCTAssertThrowsError(try S3Settings.configuration(bucket: "acme", environment: base.merging(["AWS_ENDPOINT_URL_S3": endpoint]) { $1 })) { error in
                XCTAssertFalse("\(error)".contains("pw"), "no password in the message: \(error)")
            }
        }
    }

    /// Attack item 15: S3's codes that have one cause get a hint naming it.
    func testHintsForClockCredentialsAndRegion() {
        XCTAssertTrue(S3Client.hint(for: "RequestTimeTooSkewed", key: nil, bucket: "b")?.contains("clock") == true)
        XCTAssertTrue(S3Client.hint(for: "ExpiredToken", key: nil, bucket: "b")?.contains("AWS_SESSION_TOKEN") == true)
        XCTAssertTrue(S3Client.hint(for: "AuthorizationHeaderMalformed", key: nil, bucket: "b")?.contains("set AWS_REGION") == true)
        XCTAssertEqual(S3Client.hint(for: "PermanentRedirect", key: nil, bucket: "b", bucketRegion: "ap-south-1"),
                       "the bucket is in ap-south-1: set AWS_REGION=ap-south-1 (or --s3-region ap-south-1)")
        XCTAssertTrue(S3Client.hint(for: nil, key: "k", bucket: "b", status: 307)?.contains("AWS_REGION") == true)
        XCTAssertEqual(S3Client.meaning(of: 503), "(Service Unavailable: slow down)")
        XCTAssertTrue(S3Client.hint(for: HTTPTransportError(code: 60, message: "SSL certificate problem"), caBundle: nil).contains("AWS_CA_BUNDLE"))
    }

    /// Attack item 1: a request whose caller did not say ends at a signal unless it is a delete (an abort,
    /// DeleteObjects, a lock's conditional delete), which the clean-up after the signal needs.
    func testRequestsEndAtASignalByDefaultExceptDeletes() {
        XCTAssertTrue(S3Client.interruptibleByDefault("GET", query: [("list-type", "2")]))
        XCTAssertTrue(S3Client.interruptibleByDefault("HEAD", query: []))
        XCTAssertTrue(S3Client.interruptibleByDefault("PUT", query: []))
        XCTAssertTrue(S3Client.interruptibleByDefault("POST", query: [("uploadId", "u")]), "CompleteMultipartUpload")
        XCTAssertFalse(S3Client.interruptibleByDefault("DELETE", query: [("uploadId", "u")]), "an upload's abort")
        XCTAssertFalse(S3Client.interruptibleByDefault("POST", query: [("delete", "")]), "DeleteObjects")
    }
}

/// When temporary credentials are fetched again.
final class AWSCredentialRefreshTests: XCTestCase {
    func testCredentialsAreFetchedAgainBeforeTheyExpire() throws {
        let fetched = Date(timeIntervalSince1970: 1_800_000_000)
        // An hour-long role session: five minutes before its end.
        XCTAssertEqual(AWSCredentialSource.refreshTime(fetched: fetched, expiry: fetched.addingTimeInterval(3600)), fetched.addingTimeInterval(3300))
        // A short one: a fifth of its life before the end.
        XCTAssertEqual(AWSCredentialSource.refreshTime(fetched: fetched, expiry: fetched.addingTimeInterval(100)), fetched.addingTimeInterval(80))
        // Already past by this clock: used, and asked for again in a minute, not on every request.
        XCTAssertEqual(AWSCredentialSource.refreshTime(fetched: fetched, expiry: fetched.addingTimeInterval(-5)), fetched.addingTimeInterval(60))
        XCTAssertEqual(AWSCredentialSource.refreshTime(fetched: fetched, expiry: nil), fetched.addingTimeInterval(3600))
    }

    func testExpiriesAreReadAsTheServicesWriteThem() throws {
        // IMDS and the container endpoint write whole seconds; STS (moto's, at least) microseconds.
        for text in ["2026-11-27T14:36:51Z", "2026-11-27T14:36:51.342Z", "2026-11-27T14:36:51.342865Z"] {
            let date = try XCTUnwrap(Timestamp.parse(text), text)
            XCTAssertEqual(date.timeIntervalSince1970, 1_795_790_211, accuracy: 1, text)
        }
    }
}

/// Half a credential setting is refused, not passed over for the machine's role.
final class AWSCredentialChainTests: XCTestCase {
    func testHalfASettingIsRefusedAndAWindowsCredentialsFileIsRead() throws {
        let base = ["AWS_EC2_METADATA_DISABLED": "true", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/credentials"]
        for (name, words) in [("AWS_ACCESS_KEY_ID", "without AWS_SECRET_ACCESS_KEY"), ("AWS_SECRET_ACCESS_KEY", "without AWS_ACCESS_KEY_ID")] {
            XCTAssertThrowsError(try S3Settings.configuration(bucket: "acme", environment: base.merging([name: "x"]) { $1 })) { error in
                XCTAssertTrue("\(error)".contains(words), "\(error)")
            }
        }
        let path = NSTemporaryDirectory() + "credentials-\(UUID().uuidString)"
        addTeardownBlock { try? FileManager.default.removeItem(atPath: path) }
        try "[default]\r\naws_access_key_id = WINKEY\r\naws_secret_access_key = winsecret\r\n".write(toFile: path, atomically: true, encoding: .utf8)
        let windows = try S3Settings.configuration(bucket: "acme", environment: base.merging(["AWS_SHARED_CREDENTIALS_FILE": path]) { $1 })
        XCTAssertEqual(try windows.credentials.current(), AWSCredentials(accessKeyID: "WINKEY", secretAccessKey: "winsecret"))
        XCTAssertThrowsError(try S3Settings.configuration(bucket: "acme", environment: base.merging(["AWS_SHARED_CREDENTIALS_FILE": path, "AWS_PROFILE": "prod"]) { $1 })) { error in
            XCTAssertTrue("\(error)".contains("profile prod has no aws_access_key_id"), "\(error)")
        }
    }

    func testOnlyAddressesWrittenAsThisMachinesCountAsLocal() {
        for host in ["127.0.0.1", "127.1.2.3", "[::1]", "::1", "localhost", "169.254.170.2", "169.254.170.23", "[fd00:ec2::23]"] {
            XCTAssertTrue(S3Settings.isLocal(host), host)
        }
        for host in ["127.evil.example", "127.0.0.1.evil.example", "127.1", "127.0.0.256", "128.0.0.1", "example.com", "169.254.169.254", "0x7f.0.0.1"] {
            XCTAssertFalse(S3Settings.isLocal(host), host)
        }
    }
}
