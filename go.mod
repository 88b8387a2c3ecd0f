module github.com/keyward/keyward

go 1.26

require github.com/miekg/pkcs11 v1.1.2 // indirect
