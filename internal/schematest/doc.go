// Package schematest holds types for the tests of cacheaside's type fingerprint: v1/models
// and v2/models each define a User, of different shapes, whose reflect String is the same
// ("models.User").
package schematest
