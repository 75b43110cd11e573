import BackupStorage
import Foundation
import XCTest

/// The published examples of the S3 API reference ("Signature Calculations for the Authorization
/// Header", examples section), as collected in shared/reference/s3/sigv4-vectors.md section A.
final class SigV4SignerTests: XCTestCase {
    let signer = SigV4Signer(credentials: AWSCredentials(accessKeyID: "AKIAIOSFODNN7EXAMPLE",
                                                         secretAccessKey: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
                             region: "us-east-1")
    let date = Date(timeIntervalSince1970: 1_369_353_600)   // 2013-05-24T00:00:00Z
    let host = "examplebucket.s3.amazonaws.com"

    private func signature(_ request: SigV4Signer.Request) -> String {
        let authorization = signer.sign(request, at: date)["Authorization"] ?? ""
        return String(authorization.split(separator: "=").last ?? "")
    }

    func testSigningKey() {
        let key = signer.signingKey(day: "20130524").withUnsafeBytes { Data($0) }
        XCTAssertEqual(key.map { String(format: "%02x", $0) }.joined(), "dbb893acc010964918f1fd433add87c70e8b0db6be30c1fbeafefa5ec6ba8378")
    }

    func testGetObjectWithRange() {
        let request = SigV4Signer.Request(method: "GET", encodedPath: "/test.txt",
                                          headers: ["Host": host, "Range": "bytes=0-9"], payloadHash: SigV4Signer.emptyPayloadHash)
        XCTAssertEqual(signature(request), "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")
        let added = signer.sign(request, at: date)
        XCTAssertEqual(added["Authorization"], "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")
        XCTAssertEqual(added["x-amz-date"], "20130524T000000Z")
    }

    func testPutObjectWithEncodedKeyAndStorageClass() {
        let request = SigV4Signer.Request(
            method: "PUT", encodedPath: "/" + SigV4Signer.encode("test$file.text", keepSlash: true),
            headers: ["Host": host, "Date": "Fri, 24 May 2013 00:00:00 GMT", "x-amz-storage-class": "REDUCED_REDUNDANCY"],
            payloadHash: "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072")
        XCTAssertEqual(request.encodedPath, "/test%24file.text")
        XCTAssertEqual(signature(request), "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd")
    }

    func testGetBucketLifecycle() {
        let request = SigV4Signer.Request(method: "GET", encodedPath: "/", query: [("lifecycle", "")],
                                          headers: ["Host": host], payloadHash: SigV4Signer.emptyPayloadHash)
        XCTAssertEqual(signature(request), "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543")
    }

    func testListObjects() {
        let request = SigV4Signer.Request(method: "GET", encodedPath: "/", query: [("prefix", "J"), ("max-keys", "2")],
                                          headers: ["Host": host], payloadHash: SigV4Signer.emptyPayloadHash)
        var headers = request.headers
        headers["x-amz-date"] = "20130524T000000Z"
        headers["x-amz-content-sha256"] = SigV4Signer.emptyPayloadHash
        var full = request
        full.headers = headers
        XCTAssertEqual(signer.canonicalRequest(full).0, """
            GET
            /
            max-keys=2&prefix=J
            host:examplebucket.s3.amazonaws.com
            x-amz-content-sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855
            x-amz-date:20130524T000000Z

            host;x-amz-content-sha256;x-amz-date
            e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855
            """)
        XCTAssertEqual(signature(request), "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7")
    }

    func testCredentialsNeverPrintTheSecret() {
        XCTAssertFalse("\(signer.credentials)".contains("wJalr"))
    }
}
